"""`--after move` killed between its steps: the file is never lost to the reports.

The watcher used to rename the file into processed/ or failed/ and only then record where it
went (``images.archived_path``). Killed in between, the row kept the drop-folder path, the
file lay where nobody looked (the restarted watcher no longer sees it: it left the folder)
and the exam report drew no view: "the file is no longer at its path". The kill is simulated
here by an exception no handler catches, raised inside the rename (``os.replace``) of the
image's own file, before or after the rename itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from producer.watch.service import Watcher, WatchOptions
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import ErrorCode, Laterality, View
from shared.imaging.identity import current_location, file_has_identity
from shared.queue import create_celery_app
from shared.synthetic import synth_mammogram, write_dicom


class Killed(BaseException):
    """SIGKILL, as far as the watcher can tell: nothing catches it, nothing runs after."""


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _watcher(settings: Settings, sessions: sessionmaker[Session], root: Path) -> Watcher:
    key = SecretStr("unit-test-key-0123456789abcdef")  # synthetic files carry a PatientID
    s = settings.model_copy(update={"watch_quiet_period_s": 0.0, "patient_id_key": key,
                                    "watch_after": "move"})
    return Watcher(s, sessions, create_celery_app(s.embedded()), WatchOptions(root))


def _finished_file(settings: Settings, sessions: sessionmaker[Session], root: Path,
                   outcome: str) -> tuple[Watcher, Path]:
    """exam0000_LCC.dcm registered by a watcher, then done or failed (filed at once)."""
    path = root / "exam0000_LCC.dcm"
    root.mkdir()
    pixels = synth_mammogram(np.random.default_rng(1), size=(96, 80))
    write_dicom(path, pixels, study_uid="1.2.9", sop_uid="1.2.9.1",
                laterality=Laterality.LEFT, view=View.CC)
    watcher = _watcher(settings, sessions, root)
    watcher.scan()
    watcher.queue_ready(threading.Event())
    with sessions() as session:
        if outcome == "done":
            lifecycle.mark_done(session, [1])
        else:  # a failure of the content: filed at once
            lifecycle.mark_failed(session, 1, ErrorCode.NOT_MAMMOGRAPHY, "not a mammogram")
        session.commit()
    return watcher, path


def _killed_at_rename(monkeypatch: pytest.MonkeyPatch, path: Path, *, renamed: bool) -> None:
    """The process dies as ``path`` is renamed: just before, or just after (``renamed``)."""
    real = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(src) != path:  # the failure's sidecar, written through a temporary name
            real(src, dst, **kwargs)
            return
        if renamed:
            real(src, dst, **kwargs)
        raise Killed

    monkeypatch.setattr(os, "replace", replace)


def _row(sessions: sessionmaker[Session]) -> tuple[str, str | None, str]:
    with sessions() as session:
        row = session.execute(select(Image.source, Image.archived_path, Image.identity)
                              .where(Image.id == 1)).one()
    return row.source, row.archived_path, row.identity


def _reports_find_it(sessions: sessionmaker[Session], where: Path) -> None:
    """The exam report and the worker look where ``current_location`` says: the file is
    there, and it is the image's."""
    source, archived, identity = _row(sessions)
    assert current_location(source, archived) == str(where)
    assert file_has_identity(where, identity)


def _filed(root: Path, outcome: str) -> Path:
    return root / ("processed" if outcome == "done" else "failed") / "exam0000_LCC.dcm"


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_killed_just_after_the_rename_the_new_place_is_already_recorded(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    root = tmp_path / "in"
    watcher, path = _finished_file(settings, sessions, root, outcome)
    _killed_at_rename(monkeypatch, path, renamed=True)
    with pytest.raises(Killed):
        watcher.followup.poll()
    monkeypatch.undo()
    filed = _filed(root, outcome)
    assert filed.is_file() and not path.exists()
    assert _row(sessions)[1] == str(filed)
    _reports_find_it(sessions, filed)
    # The restarted watcher has nothing left to do, and changes nothing.
    _watcher(settings, sessions, root).scan()
    assert _row(sessions)[1] == str(filed)
    _reports_find_it(sessions, filed)


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_killed_between_the_record_and_the_rename_the_restart_moves_the_file(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    root = tmp_path / "in"
    watcher, path = _finished_file(settings, sessions, root, outcome)
    _killed_at_rename(monkeypatch, path, renamed=False)
    with pytest.raises(Killed):
        watcher.followup.poll()
    monkeypatch.undo()
    filed = _filed(root, outcome)
    assert path.is_file() and not filed.exists()
    # Recorded where it was going; nothing there yet, so readers look at the source.
    assert _row(sessions)[1] == str(filed)
    _reports_find_it(sessions, path)
    _watcher(settings, sessions, root).scan()  # the restart
    assert filed.is_file() and not path.exists()
    assert _row(sessions)[1] == str(filed)
    _reports_find_it(sessions, filed)
    if outcome == "failed":
        reason = filed.with_name(filed.name + ".reason.txt").read_text()
        assert "reason: not_mammography" in reason
    assert sorted(p.name for p in filed.parent.iterdir()) == sorted(
        [filed.name] + ([f"{filed.name}.reason.txt"] if outcome == "failed" else []))


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_a_rename_that_fails_takes_back_the_recorded_path(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        outcome: str) -> None:
    root = tmp_path / "in"
    watcher, path = _finished_file(settings, sessions, root, outcome)
    real = os.replace

    def refuse(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(src) == path:
            raise PermissionError(13, "Permission denied")
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    monkeypatch.undo()
    assert path.is_file()
    assert _row(sessions)[1] is None
    assert list(_filed(root, outcome).parent.iterdir()) == []  # no reason without its file
    assert (f"could not move exam0000_LCC.dcm (image 1, {outcome}): Permission denied; it "
            "stays in place and is tried again at the next scan") in caplog.messages
    watcher.scan()
    assert _row(sessions)[1] == str(_filed(root, outcome))
    _reports_find_it(sessions, _filed(root, outcome))


class _Refusing:
    """Sessions whose statements the database refuses (locked, gone away)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def __call__(self) -> Session:
        session = self.sessions()
        refuse: Callable[..., Any] = _raise_operational
        session.execute = refuse  # type: ignore[method-assign]
        return session


def _raise_operational(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("UPDATE images", {}, Exception("database is locked"))


def test_a_record_the_database_refuses_leaves_the_file_in_place_until_the_next_scan(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # Moved anyway, as before, the file lay where no report looks for it.
    root = tmp_path / "in"
    watcher, path = _finished_file(settings, sessions, root, "done")
    actions = watcher.followup.actions
    actions.sessions = _Refusing(sessions)  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    assert path.is_file() and not (root / "processed/exam0000_LCC.dcm").exists()
    assert ("left exam0000_LCC.dcm in place: where image 1 goes could not be recorded "
            "(OperationalError); tried again at the next scan") in caplog.messages
    actions.sessions = sessions
    watcher.scan()
    _reports_find_it(sessions, _filed(root, "done"))
