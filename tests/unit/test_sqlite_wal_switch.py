"""Processes started together on a SQLite file still in rollback-journal mode: the switch
to WAL waits for the other's lock instead of failing at once (a worker beside a watcher
exited 7, "database is locked", in a CI run), and `mammo db upgrade` leaves the file in WAL
so that the race does not arise."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared.config import Settings
from shared.db.engine import (
    create_db_engine,
    failed_command_as_error,
    unavailable_as_error,
    upgrade,
)
from shared.errors import DatabaseUnavailableError


def _journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def _settings(path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{path}", broker_url=None,  # type: ignore[call-arg]
                    _env_file=None)


def test_the_switch_to_wal_waits_for_another_connections_write(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    assert _journal_mode(path) == "delete"
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    released = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    released.start()
    engine = create_db_engine(_settings(path))
    started = time.monotonic()
    try:
        with engine.connect() as conn:  # before the fix: "database is locked" in 0.1 s
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        released.join()
        holder.close()
        engine.dispose()
    assert time.monotonic() - started >= 0.9
    assert _journal_mode(path) == "wal"


def test_an_upgraded_file_is_left_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    engine = create_db_engine(_settings(path))
    upgrade(engine)
    engine.dispose()
    assert _journal_mode(path) == "wal"


def test_a_lock_held_past_the_wait_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    sqlite3.connect(path).close()
    engine = create_db_engine(_settings(path))
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    with pytest.raises(DatabaseUnavailableError) as caught, unavailable_as_error(engine):
        raise OperationalError("PRAGMA journal_mode=WAL", {}, busy)
    assert "Another process held the SQLite file" in str(caught.value)
    assert "folder this user can write" not in str(caught.value)
    engine.dispose()
    # The same lock met mid-command (a report, a run's save) is named the same way.
    mid_command = failed_command_as_error(
        f"sqlite:///{path}", OperationalError("UPDATE images", {}, busy))
    assert mid_command is not None and "Another process held" in str(mid_command)
    assert "folder this user can write" not in str(mid_command)
