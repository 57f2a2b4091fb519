"""``mammo worker`` logs at the level MAMMO_LOG_LEVEL (or ``mammo --log-level``) sets, as
every other command does: its Celery ``--loglevel`` was a fixed INFO, whatever was set."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from producer.cli.exit_codes import ExitCode
from tests.helpers.cli import invoke_cli


@pytest.mark.parametrize(("args", "env_level", "expected"), [
    (["worker"], "WARNING", "WARNING"),
    (["--log-level", "error", "worker"], "WARNING", "ERROR"),
    (["worker", "--loglevel", "debug"], "WARNING", "DEBUG"),  # the worker's own option wins
    (["worker"], None, "INFO"),
])
def test_the_worker_passes_the_configured_log_level_to_celery(
    args: list[str], env_level: str | None, expected: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    started: list[list[str]] = []

    def celery_worker(_app: Celery, argv: list[str]) -> int:
        started.append(argv)
        return 0

    monkeypatch.setattr("producer.cli.commands_worker._celery_worker", celery_worker)
    # No broker, no task registration, no sweeper: only the command line given to Celery.
    monkeypatch.setattr("producer.cli.commands_worker.require_broker", lambda *_a, **_k: None)
    monkeypatch.setattr("worker.tasks.register_tasks", lambda *_a, **_k: None)
    monkeypatch.setattr("worker.sweeper.install_sweeper", lambda *_a, **_k: None)
    env = {"broker_url": "redis://127.0.0.1:1/0", "model": str(tiny_model_dir),
           "database_url": f"sqlite:///{tmp_path / 'w.db'}"}
    if env_level:
        env["log_level"] = env_level
    code, out = invoke_cli(args, monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    [argv] = started
    assert f"--loglevel={expected}" in argv, argv
