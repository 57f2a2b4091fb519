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
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.tls import TlsFiles


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
    """redis-server without persistence: a restart loses every queued message.

    With ``tls`` it listens only on a TLS port (``rediss://``); with ``user`` (name,
    password) the default user is disabled and only that ACL user may connect.
    """

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None,
                 user: tuple[str, str] | None = None, denied: Sequence[str] = ()) -> None:
        """``denied``: commands that ``user`` may not run."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.tls, self.user, self.denied = tls, user, denied
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user[0]}:{self.user[1]}@" if self.user else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return (f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required"
                f"&ssl_ca_certs={self.tls.ca}")

    def _options(self) -> list[str]:
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.workdir)]
        if self.tls is None:
            options += ["--port", str(self.port)]
        else:  # no plain-text port at all
            options += ["--port", "0", "--tls-port", str(self.port),
                        "--tls-cert-file", str(self.tls.cert),
                        "--tls-key-file", str(self.tls.key),
                        "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        if self.user:
            name, password = self.user
            options += ["--user", "default", "off",
                        "--user", name, "on", f">{password}", "~*", "&*", "+@all",
                        *(f"-{command}" for command in self.denied)]
        return options

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, *self._options()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster owned by the postgres system user."""

    def __init__(self, *, tls: TlsFiles | None = None) -> None:
        """With ``tls``: ssl=on, and TCP clients must use TLS and a password (scram);
        the superuser keeps trust on the Unix socket only (see ``add_user``)."""
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
        self.tls = tls
        if tls:
            self._enable_tls(tls)

    def _enable_tls(self, tls: TlsFiles) -> None:
        for source, name in ((tls.cert, "server.crt"), (tls.key, "server.key")):
            shutil.copy(source, self.datadir / name)  # the server wants them owned, 0600
            (self.datadir / name).chmod(0o600)
            if self._as_postgres:
                shutil.chown(self.datadir / name, "postgres", "postgres")
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 reject\n")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_postgres, str(self.bindir / tool), *args], check=True,
                       capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
        if self.tls:
            options += " -c ssl=on"
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-l", str(self.datadir / "log"),
                  "-o", options, "start")
        _wait_port(self.port)

    def add_user(self, name: str, password: str) -> None:
        """A login role with a scram password, owning the ``postgres`` database's schema."""
        self._run("psql", "-h", str(self.datadir), "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                  f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; "
                  f"GRANT ALL ON SCHEMA public TO {name}; "
                  f"ALTER DATABASE postgres OWNER TO {name};")

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
