"""Predictions are stamped on the database's clock, the one `mammo status` judges them on.

`mammo status`'s pace and ETA count the predictions of the last 5 minutes, and its workers
seen those of the last 10. Stamped on their worker's clock and judged on the clock of the
host running `mammo status`, a worker behind that host had its work of a moment ago
counted as none (pace 0, no ETA, no worker scoring), and one ahead had it in the future
(no pace at all). Here the worker's and the status host's clocks (every ``utcnow`` the
pipeline, lifecycle and query code reads) are set 20 minutes off a real PostgreSQL
server's, on either side.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.registration import create_batch, register_files
from shared import queries, recovery
from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.clock import database_now
from shared.db.schema import Prediction
from shared.enums import Priority
from shared.synthetic import make_exam_set
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by
from tests.helpers.db import schema_sessions
from worker import pipeline
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

SKEW = timedelta(minutes=20)
NEAR = timedelta(seconds=30)


@pytest.fixture
def pg_settings(settings: Settings, postgres_url: str) -> Settings:
    return settings.model_copy(update={"database_url": postgres_url})


@pytest.fixture
def sessions(pg_settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(pg_settings)


def _clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """This process's clock, as every module that stamps or judges predictions reads it,
    is ``offset`` away from the database server's."""
    host_clock_off_by(monkeypatch, offset,
                      (pipeline, lifecycle, queries, recovery, clock, registration))


def _queued(sessions: sessionmaker[Session], folder: Path) -> tuple[int, list[int]]:
    """A batch of 8 registered images (2 exams)."""
    batch_id = create_batch(sessions, name="night", priority=Priority.ROUTINE, mode="test")
    registered = register_files(sessions, batch_id, make_exam_set(folder, n_exams=2, seed=21))
    assert len(registered.new_ids) == 8
    return batch_id, sorted(registered.new_ids)


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_worker_off_the_servers_clock_stamps_its_predictions_with_the_servers_time(
        pg_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    _, ids = _queued(sessions, tmp_path / "in")
    _clock_off_by(monkeypatch, offset)
    runtime = WorkerRuntime(pg_settings)
    try:
        assert process_chunk(ids[:4], token="worker", runtime=runtime).done == 4
    finally:
        runtime.close()
    with sessions() as session:
        server_now = database_now(session)
        stamps = session.execute(select(Prediction.created_at)).scalars().all()
    assert len(stamps) == 4
    for stamp in stamps:
        moment = as_utc(stamp)
        assert moment is not None and abs(moment - server_now) < NEAR


@pytest.mark.parametrize(("worker", "status"), [(-SKEW, SKEW), (SKEW, -SKEW)],
                         ids=["worker-behind-status-ahead", "worker-ahead-status-behind"])
def test_status_shows_the_pace_eta_and_worker_of_a_batch_being_scored_whatever_the_clocks(
        pg_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, worker: timedelta, status: timedelta) -> None:
    batch_id, ids = _queued(sessions, tmp_path / "in")
    _clock_off_by(monkeypatch, worker)
    runtime = WorkerRuntime(pg_settings)
    try:  # one chunk scored a moment ago; the other still queued
        assert process_chunk(ids[:4], token="worker", runtime=runtime).done == 4
    finally:
        runtime.close()

    _clock_off_by(monkeypatch, status)  # `mammo status` on another host
    lease_s = pg_settings.claim_lease_s
    with sessions() as session:
        batch = queries.batch_status(session, batch_id, lease_s=lease_s)
        seen = queries.workers_seen(session)
        health = queries.system_health(session, lease_s=lease_s)
    assert batch is not None and batch.remaining == 4
    assert batch.images_per_minute and batch.images_per_minute > 0
    assert batch.eta_seconds is not None and batch.eta_seconds > 0
    assert [(w["worker"], w["predictions"]) for w in seen] == [(runtime.worker_name, 4)]
    assert health["workers_scored_10min"].startswith(f"{runtime.worker_name} (4, ")
