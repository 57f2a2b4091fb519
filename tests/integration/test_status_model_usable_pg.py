"""`mammo status --health` on PostgreSQL fails, as every worker does, once the activated
model's directory is re-copied with another model or deleted.

Probe: with the activated directory replaced (another sha256) or gone, `mammo models list`
said "broken", every `mammo worker` exited 5 at start, and `mammo status --health` exited 0
naming ``model_active``: a monitoring check built on it stayed green while no worker could
start. Here the processes are real: PostgreSQL, Redis, `mammo worker`, `mammo status`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from tests.helpers.processes import mammo_env, run_mammo
from tests.helpers.tiny_model import build_tiny_model, change_model_files

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_health_exits_5_with_the_workers_once_the_activated_model_is_broken(
        change: str, postgres_url: str, redis_url: str, tiny_model_dir: Path,
        tmp_path: Path) -> None:
    live = tmp_path / "models" / "live"
    shutil.copytree(tiny_model_dir, live)  # the session's tiny model stays whole
    other = build_tiny_model(tmp_path / "other", seed=11, version="0.0.2")
    env = mammo_env(database_url=postgres_url, broker_url=redis_url)
    activated = run_mammo(["models", "activate", str(live)], env, tmp_path, timeout=120)
    assert activated.returncode == ExitCode.OK, activated.stderr

    health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path, timeout=90)
    assert health.returncode == ExitCode.OK, health.stderr
    row = json.loads(health.stdout)[0]
    assert (row["model_active"], row["model_usable"], row["model_problem"]) == (
        "tiny-test-model:0.0.1", True, None)

    change_model_files(change, live, live, other)
    health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path, timeout=90)
    assert health.returncode == ExitCode.NO_MODEL, health.stderr
    row = json.loads(health.stdout)[0]
    assert (row["database"], row["broker"]) == ("reachable", "reachable")
    assert (row["model_active"], row["model_usable"]) == ("tiny-test-model:0.0.1", False)
    problem = str(row["model_problem"])
    says = ("no longer holds the activated model" if change == "replaced"
            else "is not a directory on this machine")
    assert str(live) in problem and says in problem, problem
    assert "`mammo models activate` another model" in problem and "restore it" in problem
    assert "refuse its model and exit 5" in health.stderr

    table = run_mammo(["status", "--health"], env, tmp_path, timeout=90)
    assert table.returncode == ExitCode.NO_MODEL, table.stderr
    # What the health check foretells: a worker started now refuses the model.
    worker = run_mammo(["worker", "--concurrency", "1"], env, tmp_path, timeout=240)
    assert worker.returncode == ExitCode.NO_MODEL, worker.stderr[-2000:]
    assert str(live) in " ".join(worker.stderr.split())
