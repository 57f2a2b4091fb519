"""Two watchers on one folder (the README asks for one; nothing enforces it).

The day's batch counts (``submitted``, ``duplicates``) must be the files seen, however the two
interleave, and a file both watchers register is one image of the batch, never a duplicate of
itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

import producer.watch.ingest as ingest_module
from producer.registration import Registration
from producer.watch.folder import WatchFolder
from producer.watch.ingest import Ingestor
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch
from shared.queries import ResultFilter, list_results
from shared.queue import create_celery_app
from shared.synthetic import synth_mammogram, write_png


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _ingestor(settings: Settings, sessions: sessionmaker[Session], root: Path) -> Ingestor:
    return Ingestor(settings, sessions, create_celery_app(settings.embedded()),
                    WatchFolder.of(root, ()), logging.getLogger("test"),
                    mode="watch")


def _files(root: Path, names: Sequence[str]) -> list[Path]:
    root.mkdir(exist_ok=True)
    return [write_png(root / f"{name}.png",
                      synth_mammogram(np.random.default_rng(sum(map(ord, name))), size=(96, 80)))
            for name in names]


def _counts(sessions: sessionmaker[Session], batch_id: int) -> tuple[int, int]:
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch.submitted, batch.duplicates


def test_counts_are_not_lost_when_two_watchers_register_at_once(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "drop"
    first, second = _files(root, ["a", "b", "c"]), _files(root, ["d", "e"])
    one, two = _ingestor(settings, sessions, root), _ingestor(settings, sessions, root)
    real = ingest_module.register_files
    interleaved: list[bool] = []

    def register_while_the_other_registers(*args: Any, **kwargs: Any) -> Registration:
        if not interleaved:  # the first watcher's call: the second one runs in between
            interleaved.append(True)
            two.ingest(second)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "register_files", register_while_the_other_registers)
    one.ingest(first)
    assert interleaved and one.batch_id() == two.batch_id()
    assert _counts(sessions, one.batch_id()) == (5, 0)


def test_a_file_both_watchers_register_is_one_image_not_a_duplicate_of_itself(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    root = tmp_path / "drop"
    files = _files(root, ["a", "b", "c"])
    one, two = _ingestor(settings, sessions, root), _ingestor(settings, sessions, root)
    queued = one.ingest(files)
    again = two.ingest(files)
    assert len(queued.queued) == 3
    assert (again.queued, again.duplicates, again.messages) == ({}, [], 0)
    # A real copy (same bytes, another name) is still a duplicate, once.
    copy = root / "copy-of-a.png"
    copy.write_bytes(files[0].read_bytes())
    assert [d[1] for d in two.ingest([copy]).duplicates] == [min(queued.queued)]

    batch_id = one.batch_id()
    assert _counts(sessions, batch_id) == (4, 1)
    with sessions() as session:
        rows = list_results(session, ResultFilter(batch_id=batch_id, include_duplicates=True))
    assert [(r["image_id"], r["duplicate_of"]) for r in rows] == [
        *((i, None) for i in sorted(queued.queued)), (min(queued.queued), min(queued.queued))]
    assert [r["source"] for r in rows][-1] == str(copy)
