"""A real PostgreSQL with every connection slot taken (max_connections reached).

Probe: `mammo status --health` and `mammo submit` exited 7 with "Cannot reach the database
at ...: FATAL: remaining connection slots are reserved for non-replication superuser
connections. Check MAMMO_DATABASE_URL and that the server is running.": the URL is right
and the server runs. They now say what is wrong and what to do, as the worker's start-up
wait already said "PostgreSQL has no free connection slot".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import make_exam_set
from tests.helpers.processes import mammo_env, run_mammo
from tests.helpers.services import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.integration

REMEDY = ("PostgreSQL has no free connection slot (max_connections reached): close idle "
          "sessions, raise max_connections, or put a pooler (PgBouncer) in front.")
# max_connections 6, 2 of them reserved for superusers: 4 slots for the mammo role.
ROLE_SLOTS, RESERVED = 4, 2


@pytest.fixture
def small_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        with psycopg.connect(_dsn(server, "postgres"), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET max_connections = {ROLE_SLOTS + RESERVED}")
            conn.execute(f"ALTER SYSTEM SET superuser_reserved_connections = {RESERVED}")
            conn.execute("CREATE ROLE mammo LOGIN")  # not a superuser
        server.stop()
        server.start()  # max_connections is read at start only
        yield server
    finally:
        server.remove()


def _dsn(server: PrivatePostgres, user: str) -> str:
    return f"host=127.0.0.1 port={server.port} user={user} dbname=postgres"


def _url(server: PrivatePostgres, user: str) -> str:
    return f"postgresql+psycopg://{user}@127.0.0.1:{server.port}/postgres"


def test_a_full_server_is_named_with_its_remedy_not_the_url(
        small_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=1, seed=91)
    held = [psycopg.connect(_dsn(small_postgres, "mammo")) for _ in range(ROLE_SLOTS)]
    try:
        # The role's slots taken: PostgreSQL keeps the rest for superusers.
        env = mammo_env(database_url=_url(small_postgres, "mammo"), broker_url=private_redis.url,
                        patient_id_key="k" * 32)
        for args in (["status", "--health", "--format", "json"], ["submit", str(tmp_path / "in")]):
            done = run_mammo(args, env, tmp_path, timeout=90)
            assert done.returncode == ExitCode.DATABASE_UNAVAILABLE, done.stderr
            assert "remaining connection slots are reserved" in done.stderr
            assert REMEDY in done.stderr and "Check MAMMO_DATABASE_URL" not in done.stderr

        # Every slot taken: a superuser is refused too, in other words.
        held += [psycopg.connect(_dsn(small_postgres, "postgres")) for _ in range(RESERVED)]
        env["MAMMO_DATABASE_URL"] = _url(small_postgres, "postgres")
        done = run_mammo(["status", "--health"], env, tmp_path, timeout=90)
        assert done.returncode == ExitCode.DATABASE_UNAVAILABLE, done.stderr
        assert "sorry, too many clients already" in done.stderr
        assert REMEDY in done.stderr and "Check MAMMO_DATABASE_URL" not in done.stderr
    finally:
        for conn in held:
            conn.close()
    done = run_mammo(["status", "--health"], env, tmp_path, timeout=90)  # slots free again
    assert done.returncode == ExitCode.OK, done.stderr
