"""``shared.db.lock_wait``: what the notice names, and that it names only a lock wait.

The CLI's notices behind a real lock: tests/integration/test_submit_lock_wait.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from shared.config import Settings
from shared.db.engine import create_db_engine
from shared.db.lock_wait import LockWaitNotices, _postgres_line


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    built = create_db_engine(Settings(database_url=postgres_url, _env_file=None))  # type: ignore[call-arg]
    with built.begin() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
    yield built
    built.dispose()


def test_a_slow_statement_waiting_on_no_lock_is_not_called_a_lock_wait(engine: Engine) -> None:
    said: list[str] = []
    with LockWaitNotices(engine, said.append, after_s=0.3, poll_s=0.1), engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(1.5)"))
    assert said == []


def test_every_session_holding_the_lock_is_named_then_said_again_later(
        engine: Engine, postgres_url: str) -> None:
    said: list[str] = []
    plain = postgres_url.replace("+psycopg", "")
    with (psycopg.connect(plain, application_name="one") as one,
          psycopg.connect(plain, application_name="two") as two):
        one.execute("LOCK TABLE t IN ACCESS SHARE MODE")
        two.execute("LOCK TABLE t IN ACCESS SHARE MODE")
        pids = sorted(int(c.info.backend_pid) for c in (one, two))
        with (LockWaitNotices(engine, said.append, after_s=0.3, every_s=0.8, poll_s=0.1),
              engine.connect() as conn):
            conn.execute(text("SET lock_timeout = '2s'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                conn.execute(text("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
    assert 2 <= len(said) <= 4, said  # after 0.3 s, then every 0.8 s until 2 s
    first = said[0]
    assert "for a lock on table t (AccessExclusiveLock) held by another session: " \
        f"pid {pids[0]} (user postgres, application one, idle in transaction, " in first
    assert f"; pid {pids[1]} (user postgres, application two, idle in transaction, " in first
    assert f"SELECT pg_terminate_backend(PID), PID one of {pids[0]}, {pids[1]}" in first
    assert "LOCK TABLE" not in " ".join(said)  # never a holder's query


def test_a_holder_whose_state_this_user_cannot_see() -> None:
    line = _postgres_line(12.4, ("transactionid", None, "ShareLock"),
                          [(7, "etl", "\x1b[31mx", None, None)], "0")
    assert line.startswith("waited 12 s for a transactionid lock (ShareLock) held by another "
                           "session: pid 7 (user etl, application \\x1b[31mx, state not "
                           "visible to this database user). Still waiting, for as long as "
                           "it is held")
    assert line.endswith("A lock_timeout set on the database or role makes this command give "
                         "up instead (exit 7)")
