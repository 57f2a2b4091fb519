"""The connection migrations run on: one migrator at a time, everything in one transaction.

Processes that start together on a new database (``mammo run``, ``mammo watch``, workers)
all try to migrate it. Each takes the migration lock first and reads the revision after it,
so one migrates and the others find the schema current.

* PostgreSQL: a transaction-scoped advisory lock; DDL is transactional.
* SQLite file: a dedicated connection that opens ``BEGIN EXCLUSIVE`` itself (the driver's
  own transaction handling would commit each CREATE TABLE on its own, so a failed migration
  left a half-built table behind). Foreign keys are off while migrating, as Alembic's batch
  mode needs: it rebuilds a table (copy, drop, rename) that other tables' rows reference.
  They are checked before the commit instead.
* In-memory SQLite: one process only; no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process of this project.
PG_MIGRATION_LOCK = 7_314_159
# How long a SQLite migrator waits for another one (or for a long write) to finish.
SQLITE_LOCK_WAIT_S = 600
# What Alembic's batch mode names the copy of a table it rebuilds.
_BATCH_TMP_PREFIX = "_alembic_tmp_"

ForeignKeyRow = tuple[str, int | None, str]  # (table, rowid, referenced table)


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection holding the migration lock, inside the transaction that migrates.

    Leaving the block normally commits; an exception rolls everything back.
    """
    if engine.dialect.name == "sqlite" and not _is_in_memory(engine):
        with _sqlite_migration_connection(engine) as conn:
            yield conn
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        yield conn


def _is_in_memory(engine: Engine) -> bool:
    url = engine.url
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


@contextmanager
def _sqlite_migration_connection(engine: Engine) -> Iterator[Connection]:
    migrator = create_engine(engine.url, poolclass=NullPool,
                             connect_args={"timeout": SQLITE_LOCK_WAIT_S})

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
