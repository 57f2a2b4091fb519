"""Run ``mammo`` as real subprocesses (own process group, so a test can kill it whole)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

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


class _LoggedProcess:
    """A subprocess whose output goes to ``log_path``; subclasses start ``proc``."""

    log_path: Path
    _log: IO[str]
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None or text in self.log(), self.log()
            return text in self.log()

        wait_for(seen, timeout=timeout, what=repr(text), on_timeout=self.log)


class WorkerProcess(_LoggedProcess):
    """``mammo worker`` in its own session; stop() kills the whole process group."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log: Path, *extra: str,
                 wrapper: Sequence[str] = ()) -> None:
        """``wrapper`` prefixes the command (e.g. ``setpriv ...`` to drop capabilities)."""
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [*wrapper, *MAMMO, "worker", "--loglevel", "INFO", *extra], env=dict(env), cwd=cwd,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

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


class WatchProcess(_LoggedProcess):
    """``mammo watch`` in its own session, logging to a file."""

    def __init__(self, env: Mapping[str, str], cwd: Path, folder: Path, *extra: str) -> None:
        self.log_path = cwd / f"watch-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([*MAMMO, "watch", str(folder), *extra], env=dict(env),
                                     cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM, as a service manager would; return the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")


def forkservers_of(marker: str) -> list[int]:
    """Live multiprocessing forkservers, and the decoders they forked (same command line),
    whose environment holds ``marker`` (``KEY=VALUE``, set for one test's workers): per pool
    child one forkserver plus MAMMO_DECODE_PROCESSES, none left by a dead one."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (b"multiprocessing.forkserver" in cmdline and state != "Z"
                and marker.encode() in environ):
            found.append(int(proc.name))
    return found


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a prefork worker's pool processes)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/PID/status in MB (``VmRSS`` now, ``VmHWM`` peak); 0 if gone.

    Sampled rather than ru_maxrss: a child forked from the test process (TensorFlow-sized)
    would report the parent's peak carried across fork+exec.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pids: list[int]) -> float:
    """Largest VmHWM among ``pids`` (each worker child holds its own model)."""
    return max((status_mb(p, "VmHWM") for p in pids), default=0.0)


def without_file_permission_bypass() -> list[str]:
    """A command prefix that drops root's power to read any file (CAP_DAC_*), so a file
    with mode 000 is unreadable as it would be for a service account; [] when not root."""
    if os.geteuid() != 0:
        return []
    import shutil

    import pytest

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop the power to read")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
