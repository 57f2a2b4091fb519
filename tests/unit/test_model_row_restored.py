"""A worker's model row removed or given to another model under it (a database restored).

Probe (model_row_restored, real PostgreSQL and `mammo worker`): the worker kept the model
row id it registered at start. A database restored from a backup taken before that lacked
the row: every save failed on the foreign key (`raised unexpected: IntegrityError`), each
try charged the images an attempt, and healthy images ended `failed` `poison`. Or the id
was given to the model activated after the restore (default 1.8.0): the tiny model's
scores were stored as default 1.8.0's. The save now checks the row in its transaction and
registers the model again when it changed. Real PostgreSQL and worker:
tests/integration/test_model_row_restored.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models.activation import activate
from models.registry import ModelSpec, resolve_model
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, ModelVersion, Prediction
from shared.enums import Priority
from shared.synthetic import make_exam_set
from worker.pipeline import process_chunk
from worker.runtime import ModelUnavailableError, WorkerRuntime

CHANGED = "its row in the database changed under this worker"


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _queued(sessions: sessionmaker[Session], folder: Path) -> list[int]:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    return register_files(sessions, batch, make_exam_set(folder, n_exams=1, seed=61)).new_ids


def _started(settings: Settings) -> WorkerRuntime:
    """A worker process that loaded and registered its model (id 1)."""
    runtime = WorkerRuntime(settings)
    runtime.require_model()
    assert runtime.model_version_id == 1
    return runtime


def _restore_without_the_row(sessions: sessionmaker[Session]) -> None:
    """What a backup taken before the worker registered its model leaves: no such row."""
    with sessions() as s:
        s.execute(delete(ModelVersion))
        s.commit()


def _scored_by(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with sessions() as s:
        return sorted((n, v, h) for n, v, h in s.execute(
            select(ModelVersion.name, ModelVersion.version, ModelVersion.sha256)
            .join(Prediction, Prediction.model_version_id == ModelVersion.id)).all())


def _images(sessions: sessionmaker[Session]) -> list[tuple[str, str | None, int]]:
    with sessions() as s:
        return sorted((st, e, a) for st, e, a in s.execute(
            select(Image.state, Image.error_code, Image.attempts)).all())


@pytest.mark.parametrize("restored", ["row_gone", "id_reused"])
def test_a_save_registers_the_model_again_when_its_row_changed_under_the_worker(
        restored: str, settings: Settings, sessions: sessionmaker[Session],
        tiny_model_spec: ModelSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = _queued(sessions, tmp_path / "in")
    runtime = _started(settings)
    _restore_without_the_row(sessions)
    if restored == "id_reused":
        # `mammo models activate default` after the restore: the shipped model takes id 1,
        # the id this worker registered its own model under.
        with sessions() as s:
            assert activate(s, resolve_model("default")) == 1
            s.commit()

    with caplog.at_level(logging.WARNING, logger="worker.runtime"):
        result = process_chunk(ids, token="task-1", runtime=runtime)
        again = process_chunk(ids, token="task-2", runtime=runtime)  # nothing left to do

    assert (result.done, result.failed, again.claimed) == (4, 0, 0)
    assert _images(sessions) == [("done", None, 1)] * 4
    mine = (tiny_model_spec.name, tiny_model_spec.version, tiny_model_spec.sha256)
    assert _scored_by(sessions) == [mine] * 4
    # SQLite gives a row lost at the top its id again; the shipped model holds id 1.
    assert runtime.model_version_id == (1 if restored == "row_gone" else 2)
    warnings = [r.getMessage() for r in caplog.records if CHANGED in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert ("id 1 is gone or another model's; database restored from a backup?); "
            f"registered again, its predictions are saved under id {runtime.model_version_id}"
            ) in warnings[0]


def test_a_row_renumbered_under_the_worker_is_used_not_registered_twice(
        settings: Settings, sessions: sessionmaker[Session], tiny_model_spec: ModelSpec,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = _queued(sessions, tmp_path / "in")
    runtime = _started(settings)
    with sessions() as s:  # a restore that gave the model's row another id
        s.execute(update(ModelVersion).where(ModelVersion.id == 1).values(id=7))
        s.commit()
    with caplog.at_level(logging.WARNING, logger="worker.runtime"):
        assert process_chunk(ids, token="task-1", runtime=runtime).done == 4
    assert "(it is id 7 now, not 1; database restored from a backup?)" in caplog.text
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert set(s.scalars(select(Prediction.model_version_id))) == {7}


def test_a_model_the_restored_database_refuses_hands_its_images_back_uncharged(
        settings: Settings, sessions: sessionmaker[Session], tiny_model_spec: ModelSpec,
        tmp_path: Path) -> None:
    ids = _queued(sessions, tmp_path / "in")
    runtime = _started(settings)
    with sessions() as s:  # the restored rows hold other weights under its name and version
        s.execute(update(ModelVersion).values(sha256="f" * 64))
        s.commit()

    with pytest.raises(ModelUnavailableError, match="registering it again is refused"):
        process_chunk(ids, token="task-1", runtime=runtime)

    assert _images(sessions) == [("queued", None, 0)] * 4
    assert _scored_by(sessions) == []
    with pytest.raises(ModelUnavailableError):  # the process scores nothing more
        runtime.require_model()
