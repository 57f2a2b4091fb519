"""A database that refuses the workers' saves shows in `mammo status`: real PostgreSQL, real
Redis, the real chunk task.

PostgreSQL refuses each prediction as a full disk does (SQLSTATE 53100, with its message and
hint; the probe put the table in a tablespace on a full tmpfs, which needs root). The chunk
hands its images back, attempts refunded, and its worker records the failure in the broker:
`mammo status --health` names it and exits 7 (the database refuses writes), while the
database still answers its reads. The next successful save deletes the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

import worker.tasks
from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.schema import Image
from shared.enums import Priority
from shared.errors import DatabaseUnavailableError
from shared.queue import TASK_PROCESS_CHUNK, create_celery_app
from shared.save_failures import KEY_PREFIX
from shared.synthetic import make_exam_set
from tests.helpers.cli import run_cli
from tests.helpers.db import schema_sessions
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.integration

DISK_FULL = """
CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file "base/16384/16417": No space left on device'
    USING ERRCODE = '53100', HINT = 'Check free disk space.';
END $$;
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON predictions
  FOR EACH ROW EXECUTE FUNCTION disk_full();
"""


@pytest.fixture
def wired(broker: tuple[Settings, Celery], postgres_url: str) -> Iterator[tuple[Settings, Celery]]:
    settings, _ = broker
    settings = settings.model_copy(update={"database_url": postgres_url})
    app = create_celery_app(settings)
    yield settings, app
    app.close()


@pytest.fixture
def sessions(wired: tuple[Settings, Celery]) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(wired[0])


def _status(settings: Settings, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> tuple[int, dict[str, object], str]:
    assert settings.broker_url is not None
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=settings.database_url, broker_url=settings.broker_url)
    return result.exit_code, json.loads(result.stdout)[0], result.stderr


def test_refused_saves_show_in_status_until_a_save_succeeds(
        wired: tuple[Settings, Celery], sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = wired
    batch_id = create_batch(sessions, name="full disk", priority=Priority.ROUTINE, mode="test")
    ids = sorted(register_files(sessions, batch_id,
                                make_exam_set(tmp_path / "in", n_exams=1, seed=5)).new_ids)
    with sessions() as session:
        session.execute(text(DISK_FULL))
        session.commit()
    runtime = WorkerRuntime(settings)
    monkeypatch.setattr(worker.tasks, "TRANSIENT_RETRIES", 0)  # one try, then the sweeper's
    worker.tasks.register_tasks(app, runtime)
    task = app.tasks[TASK_PROCESS_CHUNK]
    assert settings.broker_url is not None
    client = redis.Redis.from_url(settings.broker_url)
    key = KEY_PREFIX + runtime.worker_name
    try:
        code, health, stderr = _status(settings, monkeypatch, tmp_path)
        assert (code, health["saves_failing"], health["save_failure"]) == (ExitCode.OK, 0, None)

        outcome = task.apply(args=[ids])
        assert outcome.failed() and isinstance(outcome.result, DatabaseUnavailableError)
        with sessions() as session:  # nothing lost, nothing charged
            assert sorted(session.execute(select(Image.state, Image.attempts)).all()) == \
                [("queued", 0)] * 4
        assert 0 < client.ttl(key) <= settings.task_time_limit_s + 120

        code, health, stderr = _status(settings, monkeypatch, tmp_path)
        assert code == ExitCode.DATABASE_UNAVAILABLE, (health, stderr)
        assert health["database"] == "reachable" and health["saves_failing"] == 1
        failure = str(health["save_failure"])
        assert failure.startswith("saves failing on 1 worker(s) for ")
        assert (f"on {runtime.worker_name}): database unavailable while saving: could not "
                'extend file "base/16384/16417": No space left on device (HINT: Check free '
                "disk space.)") in failure
        assert f"warning: {failure}." in stderr

        task.apply(args=[ids])  # a second failure: the same record, counted
        assert json.loads(client.get(key) or b"{}")["failures"] == 2

        with sessions() as session:  # space freed
            session.execute(text("DROP TRIGGER disk_full ON predictions"))
            session.commit()
        outcome = task.apply(args=[ids])
        assert outcome.successful() and outcome.result["done"] == 4, outcome.result
        assert client.exists(key) == 0
        code, health, stderr = _status(settings, monkeypatch, tmp_path)
        assert (code, health["saves_failing"], health["save_failure"]) == (ExitCode.OK, 0, None)
        assert "saves failing" not in stderr
    finally:
        runtime.close()
        client.close()
