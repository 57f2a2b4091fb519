"""`mammo submit` behind another session's lock, on a real PostgreSQL (and a SQLite file),
with real Redis.

- An administrator's ``LOCK TABLE images IN SHARE MODE`` held submit's first INSERT: it
  printed nothing for 50 s, then succeeded. It still waits (a nightly job's files must get
  in), and says on stderr, after 10 s, what it waits on: the lock and the session holding
  it (pid, user, application, state; never its query). A ``lock_timeout`` set on the
  database is the limit: exit 7 naming the lock, and no batch left behind.
- Killed (SIGKILL) while it waited there, before its first block of files was
  registered, it left its batch committed, empty, and "in progress" for ever (`mammo
  status`: ``total 0 ... finished_at -`` 20 minutes later). The batch is now committed
  with the first block, so the kill leaves none.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lock_wait
from shared.db.engine import create_db_engine, ensure_schema
from shared.synthetic import make_exam_set
from tests.helpers.cli import run_cli
from tests.helpers.processes import MAMMO, WatchProcess, mammo_env, wait_for

pytestmark = pytest.mark.integration

KEY = "k" * 32


def _migrated(url: str) -> None:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    engine.dispose()


def _plain(url: str) -> str:
    return url.replace("+psycopg", "")


@contextmanager
def _table_locked(url: str) -> Iterator[psycopg.Connection]:
    """An administrator's session holding ``LOCK TABLE images IN SHARE MODE`` (reads pass,
    every write waits) until the block ends, then committing."""
    with psycopg.connect(_plain(url), application_name="admin-psql") as locker:
        locker.execute("SET lock_timeout = 0")
        locker.execute("LOCK TABLE images IN SHARE MODE")
        yield locker


def _count(url: str, table: str) -> int:
    with psycopg.connect(_plain(url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _waiting_on_a_lock(url: str) -> bool:
    with psycopg.connect(_plain(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE NOT l.granted AND a.datname = %s", (make_url(url).database,)).fetchone()
    return bool(row and row[0])


def test_submit_killed_behind_a_lock_before_its_first_block_leaves_no_batch(
        postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    _migrated(postgres_url)
    make_exam_set(tmp_path / "in", n_exams=1, seed=3)
    env = mammo_env(database_url=postgres_url, broker_url=redis_url, patient_id_key=KEY)
    with _table_locked(postgres_url):
        submit = subprocess.Popen([*MAMMO, "submit", str(tmp_path / "in")], env=env,
                                  cwd=tmp_path, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: _waiting_on_a_lock(postgres_url), timeout=60,
                     what="submit to wait on the table lock")
        finally:
            os.killpg(submit.pid, signal.SIGKILL)
            submit.wait(timeout=30)
    # Before: 1, empty, unfinished for ever (the sweeper finishes only batches with files).
    assert _count(postgres_url, "batches") == 0
    assert _count(postgres_url, "images") == 0


def _release_after(conn_or_lock: psycopg.Connection | sqlite3.Connection,
                   seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, conn_or_lock.rollback)
    timer.start()
    return timer


def test_submit_behind_a_table_lock_says_what_holds_it_and_goes_on_waiting(
        postgres_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_wait, "NOTICE_AFTER_S", 1.0)  # 10 s in use
    _migrated(postgres_url)
    make_exam_set(tmp_path / "in", n_exams=1, seed=4)
    with _table_locked(postgres_url) as locker:
        info = locker.execute("SELECT pg_backend_pid()").fetchone()
        assert info is not None
        locker_pid = info[0]
        timer = _release_after(locker, 5)
        result = run_cli(["submit", str(tmp_path / "in")], monkeypatch, tmp_path,
                         database_url=postgres_url, broker_url=redis_url, patient_id_key=KEY)
        timer.join()
    assert result.exit_code == ExitCode.OK, result.output
    err = " ".join(result.stderr.split())
    # Before: nothing at all on stderr until the lock was released.
    assert "warning: waited 1 s for a lock on table images (RowExclusiveLock) held by " \
        f"another session: pid {locker_pid} (user postgres, application admin-psql, " in err
    assert "Still waiting, for as long as it is held" in err
    assert f"SELECT pg_terminate_backend({locker_pid})" in err
    assert "LOCK TABLE" not in err and "SHARE MODE" not in err  # never the holder's query
    assert _count(postgres_url, "images") == 4


def test_submit_gives_up_at_the_databases_lock_timeout_with_exit_7(
        postgres_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_wait, "NOTICE_AFTER_S", 1.0)
    _migrated(postgres_url)
    with psycopg.connect(_plain(postgres_url), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{make_url(postgres_url).database}" '
                      "SET lock_timeout = '4s'")
    make_exam_set(tmp_path / "in", n_exams=1, seed=5)
    with _table_locked(postgres_url):
        result = run_cli(["submit", str(tmp_path / "in")], monkeypatch, tmp_path,
                         database_url=postgres_url, broker_url=redis_url, patient_id_key=KEY)
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE, result.output
    err = " ".join(result.stderr.split())
    assert "Still waiting, up to the lock_timeout of 4s set for this database or role, " \
        "then it gives up (exit 7)" in err, err
    assert "Another session holds a lock on a table this command reads" in err, err
    assert _count(postgres_url, "batches") == 0  # nothing registered: no batch


def test_submit_behind_a_locked_sqlite_file_says_so(
        sqlite_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_wait, "NOTICE_AFTER_S", 1.0)
    _migrated(sqlite_url)
    make_exam_set(tmp_path / "in", n_exams=1, seed=6)
    path = make_url(sqlite_url).database
    assert path is not None
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # another process writing: the write lock held
    timer = _release_after(locker, 4)
    try:
        result = run_cli(["submit", str(tmp_path / "in")], monkeypatch, tmp_path,
                         database_url=sqlite_url, broker_url=redis_url, patient_id_key=KEY)
    finally:
        timer.join()
        locker.close()
    assert result.exit_code == ExitCode.OK, result.output
    err = " ".join(result.stderr.split())
    # Before: silent for up to 60 s, then exit 7 ("database is locked").
    assert f"warning: waited 1 s for the SQLite file {Path(path).resolve()}: another " \
        "process most likely holds it locked" in err, err
    assert "still waiting, for up to 60 s in all, then this command gives up (exit 7)" in err


def test_a_watcher_behind_a_table_lock_logs_what_holds_it_and_goes_on(
        postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    # The watcher waited in silence as submit did: its log now names the lock and holder.
    _migrated(postgres_url)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    env = mammo_env(database_url=postgres_url, broker_url=redis_url, patient_id_key=KEY)
    watcher = WatchProcess(env, tmp_path, incoming)
    try:
        watcher.wait_for_log("watching", timeout=120)
        with _table_locked(postgres_url) as locker:
            info = locker.execute("SELECT pg_backend_pid()").fetchone()
            assert info is not None
            make_exam_set(incoming, n_exams=1, seed=5)
            wait_for(lambda: _waiting_on_a_lock(postgres_url), timeout=120,
                     what="the watcher's INSERT waits on the lock", on_timeout=watcher.log)
            watcher.wait_for_log(f"held by another session: pid {info[0]} (user postgres, "
                                 "application admin-psql, ", timeout=60)
        wait_for(lambda: _count(postgres_url, "images") == 4, timeout=120,
                 what="the four files registered once the lock is gone",
                 on_timeout=watcher.log)
    finally:
        assert watcher.stop() == 0, watcher.log()[-3000:]
    assert "LOCK TABLE" not in watcher.log()  # never the holder's query
