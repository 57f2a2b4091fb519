"""docker-compose.yml's worker healthcheck, run as written against a real `mammo worker`.

The command is read from the compose file (so this test follows it), its `$$` escapes
undone as compose does, and run by `sh -c` as CMD-SHELL does, with the container's
HOSTNAME. A check that cannot get a reply marks every worker container unhealthy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.helpers.processes import WorkerProcess, mammo_env, wait_for

pytestmark = pytest.mark.integration
yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml")

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
# What the check said before worker.celery_app: a bare client, kombu's default separator.
BARE_BROKER_CHECK = ('celery --broker="$MAMMO_BROKER_URL" inspect ping '
                     '--destination="celery@$HOSTNAME" --timeout=10 >/dev/null')


def compose_healthcheck(service: str) -> str:
    """The CMD-SHELL line of ``service``'s healthcheck, as the container's shell gets it."""
    test = yaml.safe_load(COMPOSE.read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return str(test[1]).replace("$$", "$")


def run_check(command: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def node(tmp_path: Path, redis_url: str, tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """A live worker named celery@<unique>, and the environment its container would have."""
    hostname = f"healthcheck-{uuid.uuid4().hex[:8]}"
    env = mammo_env(broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    model=str(tiny_model_dir))
    env["HOSTNAME"] = hostname
    # `celery` of this interpreter, not whichever one PATH finds first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1",
                           "--hostname", f"celery@{hostname}")
    try:
        worker.wait_for_log(f"celery@{hostname} ready.", timeout=240)
        yield env
    finally:
        worker.stop()


@pytest.mark.timeout(600)
def test_worker_healthcheck_gets_its_workers_reply(node: dict[str, str],
                                                   tmp_path: Path) -> None:
    check = compose_healthcheck("worker")
    assert compose_healthcheck("worker-gpu") == check
    results: list[subprocess.CompletedProcess[str]] = []

    def healthy() -> bool:  # a loaded host may need a second try, as Docker allows (retries)
        results.append(run_check(check, node, tmp_path))
        return results[-1].returncode == 0

    wait_for(healthy, timeout=120, what="the compose healthcheck to pass",
             on_timeout=lambda: results[-1].stderr)

    # The old bare-broker check, against the same live worker, gets no reply: what made
    # every worker container unhealthy.
    bare = run_check(BARE_BROKER_CHECK, node, tmp_path)
    assert bare.returncode != 0, bare.stdout
