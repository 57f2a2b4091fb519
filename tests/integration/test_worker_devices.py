"""Several GPUs: each `mammo worker` process takes its own (CUDA_VISIBLE_DEVICES).

No GPU is needed: a stand-in `nvidia-smi` on PATH lists two, which is all the parent reads
(it never imports TensorFlow); the children's own log lines show which GPU each narrowed
itself to, through the real prefork pool and its process indexes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers.processes import WorkerProcess, mammo_env, wait_for
from worker.devices import device_for_child

pytestmark = pytest.mark.integration
PINNED = re.compile(r"worker process (\d+) \(pid \d+\) uses GPU (\S+)")


@pytest.mark.parametrize(("index", "visible", "gpus", "expected"), [
    (0, None, 2, "0"), (1, None, 2, "1"), (2, None, 2, "0"),  # round-robin
    (0, None, 1, None), (3, None, 0, None),  # one GPU or none: nothing to share out
    (1, "2,3", 8, "3"), (0, "5", 8, None),  # the operator's list wins
])
def test_device_for_child(index: int, visible: str | None, gpus: int,
                          expected: str | None) -> None:
    assert device_for_child(index, visible, gpus) == expected


def test_two_gpus_two_processes_one_gpu_each(tmp_path: Path, redis_url: str,
                                             tiny_model_dir: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Stand-in A (UUID: GPU-a)'\n"
                   "echo 'GPU 1: Stand-in B (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    env = mammo_env(broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    model=str(tiny_model_dir))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log")
    try:
        wait_for(lambda: worker.log().count("loaded in") >= 2, timeout=180,
                 what="both children warm", on_timeout=worker.log)
    finally:
        worker.stop()
    log = worker.log()
    assert "device gpu x2, 2 process(es)" in log
    # stop() signals the whole process group, so the pool may replace a child before the
    # parent's warm shutdown ends (CI saw it once). A replacement keeps its index, so it
    # must keep its GPU too: the pairs, not their count, are what is pinned.
    pinned = {(int(m[1]), m[2]) for m in PINNED.finditer(log)}
    assert pinned == {(0, "0"), (1, "1")}, log
