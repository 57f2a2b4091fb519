"""A real `mammo worker` whose pool processes are recycled leaves nothing in TMPDIR.

Probe (soak, `mammo worker -c 2 --max-tasks-per-child 100`, children recycled 17 times):
each pool process start left two TensorFlow ``__autograph_generated_file*.py`` files and a
``pymp-*`` directory (its decoders' forkserver socket) in TMPDIR, none ever removed, even
after a warm shutdown: a Celery pool process ends with ``os._exit``, so neither atexit
handlers nor multiprocessing's finalizers run. Each pool process now works in a private
temporary directory of its own, removed when it exits; one killed (SIGKILL, the OOM
killer) has its directory removed by the next process that starts, or by the worker's
parent when it stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.synthetic import make_exam_set
from tests.helpers.db import tally
from tests.helpers.processes import WorkerProcess, child_pids, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """The workers' TMPDIR. Short, directly under /tmp, not under pytest's tmp_path: the
    decoders' forkserver socket lives in there, and a Unix socket's path is limited to 107
    bytes (a tmp_path under pytest-xdist is about 75 already)."""
    folder = Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _left(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _own_dir(folder: Path, pid: int) -> list[Path]:
    return list(folder.glob(f"mammo-worker-{pid}-*"))


def _idle_child(worker: WorkerProcess, *, after: int) -> int:
    """A pool process that started (its model loaded) once the log was ``after`` long, all
    chunks done: it has nothing left to do, and lives on."""
    def ready() -> list[int]:
        log = worker.log()[after:]
        return [pid for pid in child_pids(worker.proc.pid) if f"worker child {pid} started" in log]

    wait_for(lambda: bool(ready()), timeout=180, what="a pool process started, idle",
             on_timeout=worker.log)
    return ready()[0]


def test_recycled_and_killed_pool_processes_leave_nothing_in_tmpdir(
        tmp_path: Path, short_tmpdir: Path, redis_url: str, postgres_url: str,
        tiny_model_dir: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=1, seed=61)  # 4 images, chunks of 1
    env = mammo_env(broker_url=redis_url, database_url=postgres_url,
                    model=str(tiny_model_dir), chunk_size="1", decode_processes="1")
    done = run_mammo(["submit", str(tmp_path / "in"), "--json"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    worker = WorkerProcess({**env, "TMPDIR": str(short_tmpdir)}, tmp_path,
                           tmp_path / "worker.log", "--concurrency", "2",
                           "--max-tasks-per-child", "1")
    try:
        wait_for(lambda: tally(postgres_url).done == 4, timeout=300,
                 what="4 images done", on_timeout=worker.log)
        # A live pool process has its directory (its forkserver's socket is in there).
        victim = _idle_child(worker, after=len(worker.log()))
        assert len(_own_dir(short_tmpdir, victim)) == 1, _left(short_tmpdir)
        os.kill(victim, signal.SIGKILL)  # the OOM killer: no handler of its own runs
        wait_for(lambda: not _own_dir(short_tmpdir, victim), timeout=180,
                 what="the killed process's directory removed by its replacement",
                 on_timeout=lambda: "\n".join(_left(short_tmpdir)) + "\n" + worker.log())
    finally:
        worker.stop()  # SIGTERM: Celery's warm shutdown
    log = worker.log()
    assert worker.proc.returncode == 0, log
    assert log.count("started (decoders and model loaded)") >= 5, log  # recycled 4 times
    assert f"mammo-worker-{victim}-" in log and "left by a worker process that was killed" in log
    assert _left(short_tmpdir) == [], log
