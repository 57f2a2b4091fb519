"""A real `mammo worker` whose model's files change on disk, then loses its pool child.

Probe (worker_model_swapped): the model directory re-copied with another version, deleted
after a newer one was activated, or a `current` symlink moved; the OOM killer then
replaced the pool child. The new child failed its load, every chunk failed after claiming
its images, the sweeper re-sent them, and after 3 tries healthy images ended `failed`
`poison` ("the worker most likely crashed on it... check the file") while `mammo status`
showed the worker live. The worker now scores with the bytes it verified at start; and a
worker whose processes cannot load its model at all claims nothing and exits 5.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select

from models.registry import MODEL_FILE, resolve_model, write_model_dir
from shared.db.schema import ModelVersion, Prediction
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.queue import QUEUE_NAME
from shared.synthetic import make_exam_set
from tests.helpers.db import image_outcomes, tally
from tests.helpers.processes import WorkerProcess, child_pids, mammo_env, run_mammo, wait_for
from tests.helpers.tiny_model import TINY_INPUT, build_tiny_model, change_model_files

pytestmark = pytest.mark.integration

# Quick sweeps: before the fix, the images went to `poison` within a minute.
FAST = {"sweep_interval_s": "2", "requeue_after_s": "5", "claim_heartbeat_s": "2"}


@pytest.fixture(scope="module")
def other_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("other"), seed=8, version="0.0.2")


def _scored_by(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(str(sha) for sha in conn.execute(
                select(ModelVersion.sha256)
                .join(Prediction, Prediction.model_version_id == ModelVersion.id)).scalars())
    finally:
        engine.dispose()


def _submit(folder: Path, env: dict[str, str], cwd: Path) -> None:
    done = run_mammo(["submit", str(folder), "--json"], env, cwd)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("change", ["replaced", "deleted", "symlink_moved"])
def test_a_worker_keeps_scoring_with_its_verified_model_after_its_files_change(
        change: str, tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
        other_version: Path) -> None:
    live = Path(shutil.copytree(tiny_model_dir, tmp_path / "models" / "0.0.1"))
    model_ref = live
    if change == "symlink_moved":
        model_ref = live.parent / "current"
        model_ref.symlink_to(live, target_is_directory=True)
    make_exam_set(tmp_path / "in", n_exams=1, seed=51)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(model_ref),
                    chunk_size="2", max_attempts="2", **FAST)
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        worker.wait_for_log("started (decoders and model loaded)", timeout=180)
        [first] = child_pids(worker.proc.pid)
        change_model_files(change, live, model_ref, other_version)
        os.kill(first, signal.SIGKILL)  # the OOM killer; Celery forks a replacement
        wait_for(lambda: any(p != first for p in child_pids(worker.proc.pid)), timeout=60,
                 what="a replacement pool child", on_timeout=worker.log)
        _submit(tmp_path / "in", env, tmp_path)
        wait_for(lambda: tally(postgres_url).terminal == 4, timeout=180,
                 what="4 images finished", on_timeout=worker.log)
        assert worker.proc.poll() is None, worker.log()
    finally:
        worker.stop()
    log = worker.log()
    # Scored once each, by the model the worker verified at start; nothing charged twice.
    assert image_outcomes(postgres_url) == [("done", None, 1)] * 4, log
    assert _scored_by(postgres_url) == [resolve_model(str(tiny_model_dir)).sha256] * 4
    assert "raised unexpected" not in log
    assert f"pinned: the {(tiny_model_dir / MODEL_FILE).stat().st_size:,} bytes of " \
           f"{live.resolve() / MODEL_FILE}" in log


def _unloadable_model(directory: Path) -> Path:
    """A model that passes every check made without TensorFlow (sha256, seal, a .keras zip
    with a config of the metadata's input size) that Keras cannot load."""
    directory.mkdir(parents=True)
    layer = {"class_name": "InputLayer", "config": {"batch_shape": [None, *TINY_INPUT, 1]}}
    with zipfile.ZipFile(directory / MODEL_FILE, "w") as archive:
        archive.writestr("config.json", json.dumps(
            {"class_name": "Functional", "config": {"layers": [layer]}}))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
    write_model_dir(directory, name="unloadable-test-model", version="0.0.1",
                    input_size=TINY_INPUT, preprocessing_version=PREPROCESSING_VERSION)
    return directory


def test_a_worker_whose_processes_cannot_load_its_model_claims_nothing_and_exits_5(
        tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    model = _unloadable_model(tmp_path / "unloadable")
    make_exam_set(tmp_path / "in", n_exams=1, seed=52)
    # Default sweeps: a quick one would re-send the prefetched chunks (harmless, but then
    # the broker's count below says nothing).
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(model),
                    chunk_size="2", max_attempts="2")
    _submit(tmp_path / "in", env, tmp_path)  # waiting for it in the broker: 2 messages
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "2")
    try:
        code = worker.proc.wait(timeout=180)
    finally:
        worker.stop()
    log = worker.log()
    assert code == 5, log
    assert ("cannot load model unloadable-test-model 0.0.1 "
            f"({model}) from its bytes, verified when the worker started: "
            "ModelIntegrityError: ") in log
    assert "mammo worker: stopped with exit 5 (no usable model)" in log
    # No image claimed or charged: queued, their messages back in the broker for a worker
    # with a usable model.
    assert image_outcomes(postgres_url) == [("queued", None, 0)] * 4, log
    client = redis.Redis.from_url(redis_url)
    assert sum(client.llen(k) for k in client.keys(f"{QUEUE_NAME}*")) == 2
    client.close()
