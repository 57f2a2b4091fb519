"""Run ``mammo`` as real subprocesses (own process group, so a test can kill it whole)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

MAMMO = [sys.executable, "-m", "producer"]


def mammo_env(**settings: str | None) -> dict[str, str]:
    """The current environment without MAMMO_* leaking in, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    for key, value in settings.items():
        if value is not None:
            env[f"MAMMO_{key.upper()}"] = value
    return env


def run_mammo(args: list[str], env: Mapping[str, str], cwd: Path,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAMMO, *args], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


class WorkerProcess:
    """``mammo worker`` in its own session; stop() kills the whole process group."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [*MAMMO, "worker", "--loglevel", "INFO", *extra], env=dict(env), cwd=cwd,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a prefork worker's pool processes)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]
