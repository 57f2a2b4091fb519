"""`mammo worker` exits non-zero when Celery stops it with an unrecoverable error.

Celery's ``worker_main`` drops the worker's exit status: a worker whose broker user may
not run BRPOP logged "Unrecoverable error: NoPermissionError" and exited 0, so a service
manager restarting workers on failure (systemd ``Restart=on-failure``) left the site
without one, and a script saw success.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.processes import mammo_env, run_mammo
from tests.helpers.services import PrivateRedis

pytestmark = pytest.mark.integration


def test_a_worker_stopped_by_an_unrecoverable_error_exits_with_celerys_failure_status(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    redis = PrivateRedis(tmp_path, user=("mammo", "pw"), denied=("brpop",))
    redis.start()
    try:
        env = mammo_env(broker_url=redis.url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                        model=str(tiny_model_dir))
        worker = run_mammo(["worker", "--concurrency", "1"], env, tmp_path, timeout=240)
    finally:
        redis.kill()
    assert "Unrecoverable error" in worker.stderr and "NoPermissionError" in worker.stderr
    assert worker.returncode == 1, worker.stderr[-2000:]
    assert "mammo worker: stopped with exit 1" in worker.stderr
