"""The connection migrations run on: one migrator at a time, everything in one transaction.

Processes that start together on a new database (``mammo run``, ``mammo watch``, workers)
all try to migrate it. Each takes the migration lock first and reads the revision after it,
so one migrates and the others find the schema current.

* PostgreSQL: a transaction-scoped advisory lock; DDL is transactional. A process that
  waits for it says so once. The migration's statements wait at most a few seconds for a
  table lock (see ``retried_while_blocked``).
* SQLite file: a dedicated connection that opens ``BEGIN EXCLUSIVE`` itself (the driver's
  own transaction handling would commit each CREATE TABLE on its own, so a failed migration
  left a half-built table behind). Foreign keys are off while migrating, as Alembic's batch
  mode needs: it rebuilds a table (copy, drop, rename) that other tables' rows reference.
  They are checked before the commit instead.
* In-memory SQLite: one process only; no lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process of this project.
PG_MIGRATION_LOCK = 7_314_159
# How long a migrator waits for the locks other processes hold (a SQLite migrator for another
# one or a long write; a PostgreSQL one for a table lock) before it gives up.
MIGRATION_LOCK_WAIT_S = 600
# How long one statement of a PostgreSQL migration waits for a table lock before the attempt
# is rolled back and retried: while an ALTER TABLE waits for its exclusive lock, PostgreSQL
# queues every new read of that table behind it, so a longer wait stalls the whole site.
PG_STATEMENT_LOCK_WAIT_S = 5.0
# A wait for another process's migration shorter than this is not worth a log line.
_TELL_WAIT_AFTER_S = 2.0
_LOCK_POLL_S = 0.5
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout (or NOWAIT) expiring
# What Alembic's batch mode names the copy of a table it rebuilds.
_BATCH_TMP_PREFIX = "_alembic_tmp_"

ForeignKeyRow = tuple[str, int | None, str]  # (table, rowid, referenced table)


class MigrationBlocked(Exception):
    """A PostgreSQL migration gave up waiting for a lock another transaction holds."""

    def __init__(self, holder: str, waited_s: float) -> None:
        super().__init__(holder)
        self.holder = holder
        self.waited_s = waited_s


@contextmanager
def migration_connection(engine: Engine, *,
                         lock_wait_s: float = MIGRATION_LOCK_WAIT_S) -> Iterator[Connection]:
    """A connection holding the migration lock, inside the transaction that migrates.

    Leaving the block normally commits; an exception rolls everything back.
    """
    if engine.dialect.name == "sqlite" and not _is_in_memory(engine):
        with _sqlite_migration_connection(engine, lock_wait_s) as conn:
            yield conn
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _take_pg_migration_lock(conn)
        yield conn


def _take_pg_migration_lock(conn: Connection) -> None:
    # Named, for the message below in the processes that wait and for pg_stat_activity,
    # unless MAMMO_DATABASE_URL gives the connection a name of its own.
    conn.execute(text("SELECT set_config('application_name', 'mammo migration', true) "
                      "WHERE current_setting('application_name') = ''"))
    # Polled rather than waited for, so that a process held up by another one's migration
    # (which may itself be waiting for a table lock) can say why it is silent.
    started = time.monotonic()
    told = False
    while not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                           {"k": PG_MIGRATION_LOCK}).scalar_one():
        if not told and time.monotonic() - started >= _TELL_WAIT_AFTER_S:
            holder = _processes(conn, _MIGRATION_LOCK_HOLDERS, {"k": PG_MIGRATION_LOCK})
            log.warning("Waiting for the database migration of %s to finish; this process "
                        "goes on once it has.", holder or "another process")
            told = True
        time.sleep(_LOCK_POLL_S)


def retried_while_blocked(conn: Connection, migrate: Callable[[], None], *,
                          lock_wait_s: float = MIGRATION_LOCK_WAIT_S) -> None:
    """Run ``migrate`` on the migration connection; on PostgreSQL, with each statement
    waiting at most ``PG_STATEMENT_LOCK_WAIT_S`` for a lock, the attempt rolled back and
    retried (saying who holds the lock) while another transaction keeps it.

    Raises ``MigrationBlocked`` once ``lock_wait_s`` have passed. The attempt is a savepoint:
    rolling it back keeps the migration lock, so the processes waiting for it keep waiting
    instead of trying (and being blocked) in turn.
    """
    if conn.dialect.name != "postgresql":
        migrate()
        return
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    started = time.monotonic()
    while True:
        with _BlockerWatch(conn.engine, pid) as watch:
            try:
                with conn.begin_nested():
                    conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"),
                                 {"ms": f"{round(PG_STATEMENT_LOCK_WAIT_S * 1000)}ms"})
                    migrate()
                return
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                    raise
        holder = watch.holder or "a transaction that ended before it could be named"
        waited = time.monotonic() - started
        if waited >= lock_wait_s:
            raise MigrationBlocked(holder, waited)
        log.warning("The database migration waits for a lock held by %s; nothing is changed "
                    "until it is released (retrying for up to %.0f s in all). Stop that "
                    "process or let it finish.", holder, lock_wait_s)
        # Between attempts the table is free for the reads that queued behind the statement.
        time.sleep(PG_STATEMENT_LOCK_WAIT_S)


# Who holds the advisory migration lock: a bigint key is split over classid and objid.
_MIGRATION_LOCK_HOLDERS = """
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (classid::bigint << 32) | objid::bigint = :k"""
_BLOCKERS = "SELECT unnest(pg_blocking_pids(:pid))"


def _processes(conn: Connection, pids_sql: str, params: dict[str, Any]) -> str | None:
    """The server processes ``pids_sql`` selects, as a person finds them (pid, application,
    state, client, how long their transaction has been open); None if there are none.

    Never their query text: it may hold patient data. Another database user's state and
    client are hidden (NULL) unless this one may read all statistics.
    """
    rows = conn.execute(text(f"""
        SELECT pid, application_name, state, host(client_addr),
               floor(extract(epoch FROM clock_timestamp() - xact_start))::bigint
        FROM pg_stat_activity WHERE pid IN ({pids_sql})
        ORDER BY xact_start NULLS LAST, pid"""), params).all()
    return ", ".join(_process(*row) for row in rows) or None


def _process(pid: int, application: str | None, state: str | None, client: str | None,
             open_s: int | None) -> str:
    details = [f"application {application!r}" if application else "no application name"]
    if state:
        details.append(state if open_s is None else f"{state}, transaction open {open_s} s")
    if client:
        details.append(f"client {client}")
    return f"server process {pid} ({', '.join(details)})"


class _BlockerWatch:
    """Names the transactions holding a lock that the migration's connection waits for.

    Looked at from a second connection while it waits: once the lock timeout cancels the
    wait, nothing on the server records what it was waiting for.
    """

    def __init__(self, engine: Engine, pid: int) -> None:
        self.holder: str | None = None
        self._engine = engine
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="migration-lock-watch",
                                        daemon=True)

    def __enter__(self) -> _BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        if self._stop.wait(_LOCK_POLL_S):  # the usual case: no wait worth a look
            return
        try:
            with self._engine.connect() as conn:
                while True:
                    seen = _processes(conn, _BLOCKERS, {"pid": self._pid})
                    conn.rollback()
                    self.holder = seen or self.holder
                    if self._stop.wait(_LOCK_POLL_S):
                        return
        except DBAPIError as exc:
            # Naming the holder is a courtesy; the retry works without it.
            log.debug("cannot look up what the migration waits for: %s", exc)


def _is_in_memory(engine: Engine) -> bool:
    url = engine.url
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


@contextmanager
def _sqlite_migration_connection(engine: Engine, lock_wait_s: float) -> Iterator[Connection]:
    migrator = create_engine(engine.url, poolclass=NullPool,
                             connect_args={"timeout": lock_wait_s})

    @event.listens_for(migrator, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver begins nothing; "begin" below does
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=OFF")  # only takes effect outside a transaction
        cur.close()

    @event.listens_for(migrator, "begin")
    def _on_begin(conn: Connection) -> None:
        # Exclusive: a second migrator waits here, then reads the revision this one wrote.
        conn.exec_driver_sql("BEGIN EXCLUSIVE")

    try:
        with migrator.begin() as conn:
            _drop_leftover_batch_tables(conn)
            yield conn
    finally:
        migrator.dispose()


def foreign_key_violations(conn: Connection) -> set[ForeignKeyRow]:
    """Rows whose foreign key points at nothing (SQLite only; empty elsewhere)."""
    if conn.dialect.name != "sqlite":
        return set()
    rows = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    return {(str(row[0]), row[1], str(row[2])) for row in rows}


def _drop_leftover_batch_tables(conn: Connection) -> None:
    """Drop the half-built table copies a failed migration of an earlier version left.

    Before migrations ran in one transaction, a batch rebuild that failed kept its
    ``_alembic_tmp_<table>`` (created and committed on its own) and every later migration
    stopped on "table ... already exists". The original table is still there and whole: the
    copy's rows were rolled back with the failure.
    """
    names = set(conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table'").scalars())
    for name in sorted(names):
        if name.startswith(_BATCH_TMP_PREFIX) and name[len(_BATCH_TMP_PREFIX):] in names:
            log.warning("dropping %s, left by a migration that failed earlier", name)
            conn.exec_driver_sql(f'DROP TABLE "{name}"')
