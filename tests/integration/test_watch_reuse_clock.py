"""A file name reused while the watcher was away is a new image, whatever the server's clock.

The watcher trusts a known path without reading it when the file's inode changed a minute
or more before its image was registered. The registration is stamped on the database's
clock and the change time on this host's: compared as they were, with a server more than
that minute ahead, a file written over the name after its image was done passed for the
registered one at start-up (or at a rescan). Nothing was logged or queued: left in place,
the new image was never scored; moved, it was filed in processed/ as the old image's. Here
the database's clock (what registration stamps and ``Clocks.read`` finds) is set 13 hours
ahead of this host's, on SQLite and on a real PostgreSQL server; the file times stay this
host's own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from tests.helpers.clock import database_clock_off_by
from tests.unit.test_watch_service import _dicom, _done, _step, _watcher

AHEAD = timedelta(hours=13)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[
        tuple[Settings, sessionmaker[Session]]]:
    if request.param == "postgresql":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_url")})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    yield settings, make_session_factory(engine)
    engine.dispose()


@pytest.mark.parametrize("after", ["leave", "move"])
def test_a_name_written_over_while_the_watcher_was_away_is_a_new_image(
        backend: tuple[Settings, sessionmaker[Session]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        after: str) -> None:
    settings, sessions = backend
    database_clock_off_by(monkeypatch, AHEAD, (clock, registration, lifecycle))
    root = tmp_path / "in"
    _dicom(root / "Y.dcm", 1)
    watcher = _watcher(settings, sessions, root, watch_after=after)
    _step(watcher)
    _done(sessions, 1)
    watcher.followup.poll()

    # The watcher stopped; another file is copied in and renamed over the name.
    os.replace(_dicom(tmp_path / "new.tmp", 2), root / "Y.dcm")
    with caplog.at_level(logging.INFO, logger="mammo.watch"):
        watcher = _watcher(settings, sessions, root, watch_after=after)
        _step(watcher)
        watcher.followup.poll()

    assert "Y.dcm now holds another file than image 1: looking at it as a new file" \
        in caplog.text
    with sessions() as session:
        rows = session.execute(select(Image.id, Image.sop_instance_uid, Image.state)
                               .order_by(Image.id)).all()
    assert [tuple(r) for r in rows] == [(1, "1.2.9.1", "done"), (2, "1.2.9.2", "queued")]
    assert (root / "Y.dcm").is_file()  # never filed as image 1's
