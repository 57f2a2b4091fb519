"""A worker started before Redis and PostgreSQL are up waits for them, then works.

After a power cut, or a boot where the servers come up after the workers, `mammo worker`
exited at once (8: broker, 7: database) and stayed gone: no service manager restarts it
unless one is set up to. It now waits, one log line per try, and starts once both answer.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from shared.synthetic import make_exam_set
from tests.helpers.db import tally
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for
from tests.helpers.services import PrivatePostgres, PrivateRedis, free_port

pytestmark = pytest.mark.integration


def _sleep_until(start: float, seconds: float) -> None:
    time.sleep(max(0.0, start + seconds - time.monotonic()))


def test_a_worker_started_before_its_servers_waits_and_then_processes_a_batch(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    redis = PrivateRedis(tmp_path)
    pg = PrivatePostgres()  # initialised, not started
    env = mammo_env(broker_url=redis.url, database_url=pg.url, model=str(tiny_model_dir),
                    chunk_size="4")
    started = time.monotonic()
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        # Neither server is up: it waits for the broker first, and stays alive doing so.
        worker.wait_for_log(f"waiting for the message broker at {redis.url}: connection "
                            "refused; the worker starts once it is reachable", timeout=60)
        _sleep_until(started, 5)
        assert worker.proc.poll() is None, worker.log()
        redis.start()
        worker.wait_for_log(f"waiting for the database at {pg.url}: connection refused",
                            timeout=90)
        _sleep_until(started, 10)
        assert worker.proc.poll() is None, worker.log()
        pg.start()
        worker.wait_for_log("the worker starts: its servers answered after", timeout=120)
        make_exam_set(tmp_path / "in", n_exams=2, seed=41)
        submitted = run_mammo(["submit", str(tmp_path / "in"), "--json"], env, tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout)["queued"] == 8
        wait_for(lambda: tally(pg.url).terminal == 8, timeout=180,
                 what="8 images from a worker that waited for its servers",
                 on_timeout=worker.log)
        t = tally(pg.url)
        log = worker.log()
    finally:
        worker.stop()
        redis.kill()
        pg.remove()
    assert t.done == 8 and t.predictions == 8 and t.max_predictions_per_image == 1, t
    assert "Cannot reach" not in log and "Traceback" not in log, log


def test_sigterm_while_waiting_stops_the_worker_cleanly(tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing ever listens there
    env = mammo_env(broker_url=broker, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    model=str(tiny_model_dir))
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        worker.wait_for_log(f"waiting for the message broker at {broker}", timeout=60)
        worker.kill(signal.SIGTERM)
        code = worker.proc.wait(timeout=30)
    finally:
        worker.stop()
    assert code == 0, worker.log()
    assert "stopped before it started; nothing was taken from the queue" in worker.log()
    assert "Traceback" not in worker.log()
