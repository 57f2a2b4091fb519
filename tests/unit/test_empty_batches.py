"""No batch stays empty and "in progress" for ever.

`mammo submit` committed its batch first, then walked the folders and read the first
block's headers: killed in between (SIGKILL, OOM), it left a batch that `mammo status`
showed as ``total 0 ... finished_at -`` for ever; the clean-up ran only on a Python
exception, and the sweeper's ``finish_open_batches`` needs a batch with files. Now the
batch is committed with its first block (`mammo submit`, `mammo run`, `mammo watch`), and
the follow-up deletes an open batch left without a file for a day (an earlier release's).
On SQLite, then PostgreSQL. The real kill: tests/integration/test_submit_lock_wait.py.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from producer import registration, submission
from producer.registration import NewBatch, create_batch, register_files
from producer.watch import ingest
from producer.watch.folder import WatchFolder
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.schema import Batch, DuplicateSubmission, Image
from shared.enums import Priority
from shared.notify import Notifier
from shared.queue import create_celery_app
from shared.recovery import follow_up
from shared.synthetic import make_exam_set


def _batches(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Batch)) or 0)


def _count_batches_at_first_read(monkeypatch: pytest.MonkeyPatch,
                                 sessions: sessionmaker[Session]) -> list[int]:
    """The number of batches committed when the first file's header is read: what a kill
    at that moment (a slow share's first read) leaves behind."""
    seen: list[int] = []
    real_read = registration._read

    def read(path: Path, ingestion: Any) -> Any:
        if not seen:
            seen.append(_batches(sessions))
        return real_read(path, ingestion)

    monkeypatch.setattr(registration, "_read", read)
    return seen


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"patient_id_key": SecretStr("k" * 32)})


def test_submit_commits_its_batch_with_its_first_block(
        keyed: Settings, each_backend_sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = each_backend_sessions
    make_exam_set(tmp_path / "in", n_exams=1, seed=3)
    seen = _count_batches_at_first_read(monkeypatch, sessions)
    outcome = submission.submit(keyed.embedded(), sessions, create_celery_app(keyed.embedded()),
                                [tmp_path / "in"], name="night")
    assert seen == [0]  # before: 1, empty and open while the first headers were read
    with sessions() as session:
        batch = session.get(Batch, outcome.batch_id)
        assert batch is not None and (batch.name, batch.submitted) == ("night", 4)
        assert session.scalar(select(func.count()).select_from(Image)
                              .where(Image.batch_id == outcome.batch_id)) == 4


def test_a_submit_whose_files_were_gone_names_a_finished_empty_batch(
        keyed: Settings, each_backend_sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the CLI's "nothing to do" check, gone before registration: as before, the
    # command names a batch, which holds nothing and is not left "in progress".
    monkeypatch.setattr(submission, "iter_files", lambda *_a, **_k: iter(()))
    (tmp_path / "in").mkdir()
    outcome = submission.submit(keyed.embedded(), each_backend_sessions,
                                create_celery_app(keyed.embedded()), [tmp_path / "in"])
    with each_backend_sessions() as session:
        batch = session.get(Batch, outcome.batch_id)
        assert batch is not None and batch.finished_at is not None


def test_a_refused_first_block_makes_the_batch_with_the_first_file_that_registers(
        keyed: Settings, each_backend_sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One file's value refused rolls its block back, the new batch with it; the files are
    # then registered one by one, and the first to commit makes the batch (once).
    sessions = each_backend_sessions
    make_exam_set(tmp_path / "in", n_exams=1, seed=4)
    files = sorted((tmp_path / "in").iterdir())
    row = registration._row

    def faulty_row(at: Path, *args: Any, **kw: Any) -> dict[str, Any]:
        made = row(at, *args, **kw)
        if at.name == files[1].name and made["state"] == "queued":
            made["format"] = None  # NOT NULL: an IntegrityError on either database
        return made

    monkeypatch.setattr(registration, "_row", faulty_row)
    reg = register_files(sessions, NewBatch("b", Priority.ROUTINE, "distributed"), files)
    assert reg.batch_id is not None
    assert (len(reg.new_ids), len(reg.rejected_ids)) == (3, 1)
    with sessions() as session:
        assert set(session.scalars(select(Image.batch_id))) == {reg.batch_id}
        batch = session.get(Batch, reg.batch_id)
        assert batch is not None and (batch.name, batch.submitted) == ("b", 4)
    assert _batches(sessions) == 1


def test_the_watcher_commits_its_day_batch_with_its_first_files(
        keyed: Settings, each_backend_sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = each_backend_sessions
    settings = keyed.embedded()
    make_exam_set(tmp_path / "drop", n_exams=1, seed=5)
    seen = _count_batches_at_first_read(monkeypatch, sessions)
    ingestor = ingest.Ingestor(settings, sessions, create_celery_app(settings),
                               WatchFolder.of(tmp_path / "drop", ()),
                               logging.getLogger("test"), mode="watch")
    first = ingestor.ingest(sorted((tmp_path / "drop").glob("*LCC*")))
    later = ingestor.ingest(sorted((tmp_path / "drop").glob("*RCC*")))
    assert seen == [0]
    assert len(first.queued) == len(later.queued) == 1
    assert _batches(sessions) == 1
    with sessions() as session:
        (batch_id,) = set(session.scalars(select(Image.batch_id)))
    assert ingestor.batch_id() == batch_id


def _aged(sessions: sessionmaker[Session], batch_id: int, hours: float, *,
          finished: bool = False) -> None:
    with sessions() as session:
        now = database_now(session)
        session.execute(update(Batch).where(Batch.id == batch_id).values(
            created_at=now - timedelta(hours=hours),
            finished_at=now if finished else None))
        session.commit()


def test_the_follow_up_deletes_open_batches_left_empty_for_a_day(
        keyed: Settings, each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    sessions = each_backend_sessions
    settings = keyed
    def made(hours: float, *, finished: bool = False) -> int:
        batch_id = create_batch(sessions, name=None, priority=Priority.ROUTINE,
                                mode="distributed")
        _aged(sessions, batch_id, hours, finished=finished)
        return batch_id

    abandoned = made(25)  # an earlier release's submit, killed before its first block
    young = made(2)  # might still be reading its first block: kept
    finished = made(25, finished=True)  # not "in progress": kept
    make_exam_set(tmp_path / "in", n_exams=1, seed=6)
    files = sorted((tmp_path / "in").iterdir())
    with_image = made(25)
    register_files(sessions, with_image, files[:1])
    with_copy = made(25)
    register_files(sessions, with_copy, files[:1])  # a copy of with_image's file
    with sessions() as session:  # open: each waits for the image, still queued
        assert session.scalar(select(DuplicateSubmission.batch_id)) == with_copy
    _aged(sessions, with_image, 25)
    _aged(sessions, with_copy, 25)

    followed = follow_up(sessions, settings, Notifier(settings, sessions))

    assert followed.discarded == (abandoned,)
    assert f"1 empty batch(es) deleted (made over 24 h ago, never given a file: {abandoned})" \
        in followed.summary()
    with sessions() as session:
        left = set(session.scalars(select(Batch.id)))
    assert left == {young, finished, with_image, with_copy}
    with sessions() as session:  # a second pass finds nothing more
        assert lifecycle.discard_empty_batches(session) == []
