"""A worker scores with the model it verified at start, whatever happens to its files.

A pool child is replaced at any time (OOM killer, --max-tasks-per-child); it used to read
the model's files again, and when they had been re-copied with another version, deleted
after a newer one was activated, or a `current` symlink had moved, every chunk failed after
claiming its images, until healthy images ended as `poison`. The parent now pins the
verified bytes (``WorkerRuntime.pin_model``); a process that cannot load its model claims
nothing, and a `mammo worker` stops with exit 5 (``worker.tasks.ModelStop``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.exceptions import Reject
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.registry import MODEL_FILE, resolve_model
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, ModelVersion, Prediction
from shared.enums import Priority
from shared.errors import ModelIntegrityError
from shared.synthetic import make_exam_set
from tests.helpers.tiny_model import build_tiny_model, change_model_files
from worker import tasks
from worker.pipeline import process_chunk
from worker.runtime import ModelUnavailableError, WorkerRuntime


@pytest.fixture(scope="module")
def other_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("other"), seed=8, version="0.0.2")


@pytest.fixture
def live(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A private copy of the tiny model (0.0.1), free to be changed or deleted."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "models" / "0.0.1"))


def _sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _queued(sessions: sessionmaker[Session], folder: Path, seed: int) -> list[int]:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    return register_files(sessions, batch, make_exam_set(folder, n_exams=1, seed=seed)).new_ids


def _scored_by(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with sessions() as session:
        rows = session.execute(select(ModelVersion.version, ModelVersion.sha256,
                                      ModelVersion.path)
                               .join(Prediction, Prediction.model_version_id == ModelVersion.id)
                               ).all()
    return sorted((str(v), str(s), str(p)) for v, s, p in rows)


def _images(sessions: sessionmaker[Session]) -> list[tuple[str, int]]:
    with sessions() as session:
        return sorted((str(s), int(a)) for s, a in session.execute(
            select(Image.state, Image.attempts)).all())


def _private_copies() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"mammo-model-{os.getpid()}-*"))


@pytest.mark.parametrize("change", ["replaced", "deleted", "symlink_moved"])
def test_a_pinned_model_scores_with_its_verified_bytes_whatever_happens_to_its_files(
        change: str, settings: Settings, tmp_path: Path, live: Path, tiny_model_dir: Path,
        other_version: Path) -> None:
    original = resolve_model(str(tiny_model_dir))
    model_ref = live
    if change == "symlink_moved":
        model_ref = live.parent / "current"
        model_ref.symlink_to(live, target_is_directory=True)
    settings = settings.model_copy(update={"model": str(model_ref)})
    sessions = _sessions(settings)
    ids = _queued(sessions, tmp_path / "in", seed=41)
    runtime = WorkerRuntime(settings)
    runtime.pin_model()  # the worker's parent, before its pool forks
    # The symlink is resolved: what was verified is what is registered and logged.
    assert runtime.model_spec.directory == live.resolve()

    change_model_files(change, live, model_ref, other_version)

    result = process_chunk(ids, token="after-the-change", runtime=runtime)

    assert (result.claimed, result.done, result.failed) == (4, 4, 0)
    assert _images(sessions) == [("done", 1)] * 4
    assert _scored_by(sessions) == [("0.0.1", original.sha256, str(live.resolve()))] * 4
    assert _private_copies() == []  # the private copy lived only while Keras read it


def test_pinning_refuses_a_model_file_that_changed_since_the_worker_checked_it(
        settings: Settings, live: Path, other_version: Path) -> None:
    # As `mammo worker` reads (and checks) it at start.
    runtime = WorkerRuntime(settings, model_spec=resolve_model(str(live)))
    shutil.copy(other_version / MODEL_FILE, live / MODEL_FILE)
    with pytest.raises(ModelIntegrityError, match="changed as the worker started"):
        runtime.pin_model()


def test_a_process_that_cannot_load_its_model_claims_and_charges_nothing(
        settings: Settings, tmp_path: Path, live: Path, other_version: Path) -> None:
    # Not pinned (the embedded worker's way): the files changed after the model was found.
    settings = settings.model_copy(update={"model": str(live)})
    sessions = _sessions(settings)
    ids = _queued(sessions, tmp_path / "in", seed=42)
    runtime = WorkerRuntime(settings)
    runtime.model_spec  # noqa: B018
    shutil.copy(other_version / MODEL_FILE, live / MODEL_FILE)

    for token in ("first", "redelivered", "and-again"):  # more tries than MAMMO_MAX_ATTEMPTS
        with pytest.raises(ModelUnavailableError, match=(
                r"cannot load model tiny-test-model 0\.0\.1 .* from its files: "
                r"ModelIntegrityError: .*sha256")):
            process_chunk(ids, token=token, runtime=runtime)
    assert _images(sessions) == [("queued", 0)] * 4  # not claimed, no attempt counted
    assert _scored_by(sessions) == []


def test_a_worker_stop_is_asked_once_and_ends_the_worker_with_exit_5() -> None:
    app = Celery("t", broker="memory://localhost/")
    stop = tasks.ModelStop(app, WorkerRuntime(Settings(_env_file=None)))  # type: ignore[call-arg]
    worker = SimpleNamespace(app=app)
    stop.exit_if_requested(sender=worker)  # nothing asked: a plain stop, exit 0
    assert stop.requested() is None

    # In the parent itself nothing is signalled; a pool process signals its parent.
    stop.request("worker process 12 cannot load model m 1 (/m): why")
    stop.request("a second process: the first reason stays")
    assert stop.requested() == "worker process 12 cannot load model m 1 (/m): why"
    stop.exit_if_requested(sender=SimpleNamespace(app=Celery("another")))  # not this worker
    with pytest.raises(SystemExit) as stopped:
        stop.exit_if_requested(sender=worker)
    assert stopped.value.code == 5


def test_a_chunk_at_a_process_without_its_model_goes_back_to_the_queue_unclaimed() -> None:
    app = Celery("t", broker="memory://localhost/")
    stop = tasks.ModelStop(app, WorkerRuntime(Settings(_env_file=None)))  # type: ignore[call-arg]
    problem = ModelUnavailableError("worker process 12 cannot load model m 1 (/m): why")
    with pytest.raises(Reject) as rejected:
        tasks._model_unavailable(stop, problem)
    assert rejected.value.requeue is True
    assert stop.requested() == str(problem)
    # An embedded run has no worker to stop: its chunk fails, and the run says why.
    with pytest.raises(ModelUnavailableError):
        tasks._model_unavailable(None, problem)
