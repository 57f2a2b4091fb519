"""Private Redis and PostgreSQL servers that a fault-injection test may kill and restart.

The shared services on the standard ports stay untouched; each test gets its own server on
a free port, in a temporary folder, and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class PrivateRedis:
    """redis-server without persistence: a restart loses every queued message."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by the postgres system user."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries are not installed")
        self.bindir, self.port = bindir, free_port()
        # Not under pytest's tmp_path: that is private to root, and the server runs as the
        # postgres user when we are root (initdb refuses to run as root).
        self.root = Path(tempfile.mkdtemp(prefix="mammo-pg-"))
        self.root.chmod(0o755)
        self.datadir = self.root / "pgdata"
        self.datadir.mkdir()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.datadir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E",
                  "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_postgres, str(self.bindir / tool), *args], check=True,
                       capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-l", str(self.datadir / "log"),
                  "-o", f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1",
                  "start")
        _wait_port(self.port)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        subprocess.run([*self._as_postgres, str(self.bindir / "pg_ctl"), "-D",
                        str(self.datadir), "-m", "immediate", "stop"], capture_output=True,
                       check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _pg_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None
