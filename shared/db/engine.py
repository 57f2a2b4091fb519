"""Engine and session factories, plus schema migration on first use.

Engines are built per process (after fork), never at import: a pooled connection shared
across a fork corrupts both sides.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session, sessionmaker

from shared.config import POSTGRES_DRIVER, Settings
from shared.db.migration_connection import (
    MIGRATION_LOCK_WAIT_S,
    MigrationBlocked,
    foreign_key_violations,
    migration_connection,
    retried_while_blocked,
)
from shared.db.refusals import discard_read_only_connection, server_remedy
from shared.db.schema import Base
from shared.db.unusable import (
    corruption_as_error,
    is_corruption,
    require_ours,
    sqlite_result_code,
)
from shared.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationError,
    UserFacingError,
    first_line,
)
from shared.urls import redact_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# SQLite grows its file and journal (or WAL) by pages: with less free than this, a write can
# fail for want of space, reported as "disk I/O error" as often as "database or disk is full".
LOW_FREE_BYTES = 1 << 20
_SQLITE_FULL = 13  # the primary result code of "database or disk is full"
_SQLITE_BUSY_CODES = (5, 6)  # "database is locked" (another connection), "table is locked"
# How long a connection waits for another one's lock (SQLite's busy handler), and so how
# long the switch to WAL is retried where that handler does not apply.
SQLITE_BUSY_TIMEOUT_S = 60
# SQLSTATE class 22, data exception: its first line quotes the value refused.
_DATA_EXCEPTION = "22"
_QUOTED = re.compile(r'"[^"]*"')
_SUPPORTED_URLS = f"Supported: sqlite:///FILE and {POSTGRES_DRIVER}://user@host/db"


def create_db_engine(settings: Settings) -> Engine:
    url = settings.database_url
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
                                   hide_parameters=True)
            _configure_sqlite(engine, wal=settings.sqlite_wal)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                   hide_parameters=True, connect_args=_server_connect_args(url))
            _pin_session_time_zone(engine)
        event.listen(engine, "handle_error", _values_left_out)
        event.listen(engine, "handle_error", discard_read_only_connection)
        return engine
    except NoSuchModuleError:
        # No such dialect at all (postgress://): no install would bring one.
        raise ConfigurationError(
            f"MAMMO_DATABASE_URL {redact_url(url)} names an unknown database type "
            f"({make_url(url).drivername}://). {_SUPPORTED_URLS} (postgres:// and "
            "postgresql:// are read as the latter).") from None
    except ImportError as exc:
        # SQLAlchemy imports the dialect's driver here (mysql:// wants MySQLdb, say).
        raise ConfigurationError(
            f"MAMMO_DATABASE_URL {redact_url(url)} needs a database driver that is not "
            f"installed ({_first_line(exc)}). {_SUPPORTED_URLS}; the PostgreSQL driver "
            "comes with pip install '.[postgres]'.") from None
    except ArgumentError as exc:
        raise ConfigurationError(
            f"MAMMO_DATABASE_URL {redact_url(url)} is not usable: {_first_line(exc)}") from None


def _server_connect_args(url: str) -> dict[str, Any]:
    """A PostgreSQL connection talks UTF-8, whatever the server's or the environment's
    default (``PGCLIENTENCODING``, the database's own encoding): names and accession
    numbers come in every script, and psycopg encodes them, and decodes what comes back,
    in the connection's client encoding. One in SQL_ASCII returned text as bytes, which
    broke SQLAlchemy's first query; one in LATIN1 raised UnicodeEncodeError on the first
    Japanese name. Set here, it beats a ``?client_encoding=`` in the URL too."""
    if make_url(url).get_backend_name() != "postgresql":
        return {}
    return {"client_encoding": "UTF8"}


def _values_left_out(context: ExceptionContext) -> None:
    """Leave the values of rows out of a database error's text, wherever it goes next: a
    log, a traceback, a Celery task-failed event, a one-line error.

    ``hide_parameters`` keeps the statement's parameters out (an accession number, a study
    date, a pseudonym, a source path); this keeps out the server's own quotes of them:
    PostgreSQL's DETAIL (``Failing row contains (...)``, ``Key (accession_number)=(...)
    already exists``) and CONTEXT (``unnamed portal parameter $3 = '...'``), and the value a
    data exception quotes in its first line (``invalid input syntax for type date:
    "..."``). What remains is the error, the constraint or table it names, and the server's
    HINT. The exception keeps its type, ``orig``, ``sqlstate`` and ``diag`` (the full
    detail, for code that asks for it): only its text changes.
    """
    orig = context.original_exception
    shown = _shown_server_error(orig)
    if shown is None or str(orig) == shown:
        return
    orig.args = (shown,)
    wrapped = context.sqlalchemy_exception
    if isinstance(wrapped, DBAPIError) and wrapped.orig is orig:
        # Its text was built from the driver's before this hook ran.
        wrapped.args = (f"({type(orig).__module__}.{type(orig).__name__}) {shown}",)


def _shown_server_error(exc: BaseException) -> str | None:
    """What of a server's error may be shown: its primary message (a data exception's
    quoted values masked) and its HINT; None for an error without a server's diagnostics
    (a connection that failed, SQLite's, whose messages name columns, not values)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return None
    if str(getattr(exc, "sqlstate", None) or "").startswith(_DATA_EXCEPTION):
        primary = _QUOTED.sub('"..."', primary)
    hint = getattr(diag, "message_hint", None)
    return f"{primary}\nHINT:  {hint}" if hint else primary


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        if wal:
            # WAL lets the producer read while a worker writes; unsafe on network shares.
            switch_to_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def _pin_session_time_zone(engine: Engine) -> None:
    """Every server connection works in UTC, whatever zone the server or database defaults
    to (a distribution's PostgreSQL takes the machine's): times come back as UTC and SQL's
    date() takes the UTC day, as every stored time and every --since/--until is UTC.

    Set once per new connection, in autocommit: a SET inside the first transaction would be
    undone by the rollback that ends it, and a pooled connection keeps the setting.
    """
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
        finally:
            dbapi_conn.autocommit = autocommit


def switch_to_wal(cursor: Any, *, wait_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the file.

    Switching a file still in rollback-journal mode (as ``mammo db upgrade`` may leave it)
    takes its write lock, and SQLite answers "database is locked" at once, without its busy
    handler, to a connection that already holds a read lock: a worker and a watcher started
    together raced for the switch, and the loser exited 7 within 30 ms.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _SQLITE_BUSY_CODES:
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _shown(engine: Engine) -> str:
    return redact_url(engine.url.render_as_string(hide_password=True))


@contextmanager
def unavailable_as_error(engine: Engine) -> Iterator[None]:
    """Turn connection failures into a ``DatabaseUnavailableError``, and a SQLite file that
    is not a database into a ``DatabaseUnusableError``, each with a readable line."""
    try:
        yield
    except DatabaseError as exc:
        # sqlite3 reports a damaged file as a DatabaseError, not an OperationalError.
        unusable = corruption_as_error(engine.url, exc)
        if unusable is not None:
            raise unusable from exc
        if not isinstance(exc, OperationalError):
            raise
        remedy = server_remedy(exc) or _remedy(
            engine.url, exc, "Check MAMMO_DATABASE_URL and that the server is running.")
        raise DatabaseUnavailableError(
            f"Cannot reach the database at {_shown(engine)}: {_first_line(exc.orig)}. "
            f"{remedy.removesuffix('.')}.") from exc


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (``sqlite:///file:PATH?uri=true`` too); None for another
    database or an in-memory one."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if url.query.get("uri") == "true":
        database = database.removeprefix("file:")
    return Path(database).resolve()


def _sqlite_remedy(url: URL, exc: DBAPIError) -> str | None:
    """What to do when a SQLite file failed, by what is wrong with it: its folder missing,
    its disk full, or this user not allowed to write; None for another database.

    A SQLite file has no server: what fails is its folder or its disk, and SQLite's own
    reason ("disk I/O error", "unable to open database file") does not say which.
    """
    path = sqlite_file(url)
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        return (f"The SQLite file {path} needs a folder this user can write ({folder} does "
                "not exist): run from a writable folder, or set MAMMO_DATABASE_URL.")
    if path.is_dir():
        return (f"{path} is a folder, not a SQLite file: set MAMMO_DATABASE_URL to a file "
                f"in it, e.g. sqlite:///{path / 'mammo.db'}.")
    free = shutil.disk_usage(folder).free
    if free < LOW_FREE_BYTES or sqlite_result_code(exc) == _SQLITE_FULL:
        return (f"The disk holding {path} is full ({_amount(free)} free): free space on it, or "
                "set MAMMO_DATABASE_URL to a database on another disk.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return (f"This user cannot write the SQLite file {path} or its folder {folder} (its "
                "disk is not full): give it write permission, run from a writable folder, or "
                "set MAMMO_DATABASE_URL.")
    return (f"The SQLite file {path} needs a folder this user can write ({folder}; its disk "
            f"is not full, {_amount(free)} free): run from a writable folder, or set "
            "MAMMO_DATABASE_URL.")


def _remedy(url: URL, exc: DBAPIError, otherwise: str) -> str:
    """What to do about ``exc``: a SQLite file's lock, folder or disk, else ``otherwise``."""
    return _sqlite_busy_remedy(url, exc) or _sqlite_remedy(url, exc) or otherwise


def _sqlite_busy_remedy(url: URL, exc: DBAPIError) -> str | None:
    # A lock is no fault of the file's folder or disk, which _sqlite_remedy would blame.
    path = sqlite_file(url)
    if path is None or sqlite_result_code(exc) not in _SQLITE_BUSY_CODES:
        return None
    return (f"Another process held the SQLite file {path} locked for over "
            f"{SQLITE_BUSY_TIMEOUT_S} s: try again once it is done; where several "
            "workers write at once, use PostgreSQL (MAMMO_DATABASE_URL).")


def _amount(size: int) -> str:
    return f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20:,} MiB"


def check_connection_options(engine: Engine) -> None:
    """Open one connection, turning a driver's refusal of the URL's options into a
    ``ConfigurationError``.

    psycopg rejects an unknown ``?option=`` only when connecting, as a ProgrammingError: no
    retry can fix that, unlike an unreachable server (OperationalError, left to the caller).
    A PostgreSQL database whose encoding is not UTF8 is refused here too (``_require_utf8``).
    """
    try:
        with engine.connect() as conn:
            _require_utf8(engine, conn)
    except (ProgrammingError, InterfaceError) as exc:
        raise ConfigurationError(
            f"The database driver refused MAMMO_DATABASE_URL {_shown(engine)}: "
            f"{_first_line(exc.orig)}. Fix the URL's options.") from None


def _require_utf8(engine: Engine, conn: Connection) -> None:
    """Refuse a PostgreSQL database whose encoding is not UTF8, before anything is stored.

    Patient text comes in any script (DICOM's ISO 2022 IR 87, GB18030, ISO_IR 192): a
    LATIN1 database stored none of it, failing the first Japanese name with a traceback
    half-way through a submit, and a SQL_ASCII one stores bytes unchecked, whatever their
    encoding. A database's encoding is fixed when it is created: no setting of ours can
    change it, so the remedy is a new database.
    """
    if engine.dialect.name != "postgresql":
        return
    encoding = str(conn.exec_driver_sql("SHOW server_encoding").scalar())
    if encoding.upper().replace("-", "") == "UTF8":
        return
    raise ConfigurationError(
        f"The PostgreSQL database at {_shown(engine)} uses encoding {encoding}; mammo "
        "stores patient names and accession numbers in any script and needs a UTF8 database: "
        "create one with `createdb -E UTF8 -T template0 NAME` (a database's encoding cannot "
        "be changed; pg_dump/pg_restore moves existing data into it) and point "
        "MAMMO_DATABASE_URL at it.")


def failed_command_as_error(url: str, exc: DatabaseError) -> UserFacingError | None:
    """The error for a database that was reached and then refused the work (a read-only
    SQLite file, a full disk, a server gone mid-command) or turned out corrupted: one line,
    password hidden. None for anything else (an IntegrityError, say): a bug.

    A PostgreSQL server that refuses writes is a setting too: a role without a privilege
    on a table (a GRANT missed after migrating as another role) and a read-only server or
    database (a standby, ``default_transaction_read_only``). The line names the table
    or statement, never the values the command was writing."""
    parsed = make_url(url)
    unusable = corruption_as_error(parsed, exc)
    # What the server's SQLSTATE says to do (shared.db.refusals): a refused write, or a
    # statement it cancelled (statement_timeout), which is no fault of the URL or the server.
    known = server_remedy(exc)
    if unusable is not None or (known is None and not isinstance(exc, OperationalError)):
        return unusable
    shown = redact_url(parsed.render_as_string(hide_password=True))
    remedy = known or _remedy(parsed, exc, "Check MAMMO_DATABASE_URL, that the server is "
                              "running and that this user may write to it.")
    return DatabaseUnavailableError(
        f"The database at {shown} refused the operation: {_first_line(exc.orig)}. "
        f"{remedy.removesuffix('.')}; work already stored is kept.")


def _first_line(exc: object) -> str:
    return first_line(exc) or type(exc).__name__


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The options are ConfigParser values: a literal "%" (URL-encoded query values such as
    # sslrootcert=%2Fetc%2F..., or a password) must be doubled or interpolation fails.
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revisions(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def head_revisions(engine: Engine | None = None) -> frozenset[str]:
    """The schema revisions this release migrates a database to (``engine``: none needed,
    the scripts say)."""
    # Several heads are allowed: independent features add migrations on parallel branches.
    if engine is None:
        return frozenset(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())
    return frozenset(_scripts(engine).get_heads())


def _scripts(engine: Engine) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(engine))


def _describe(revisions: frozenset[str]) -> str | None:
    return "+".join(sorted(revisions)) or None


def upgrade(engine: Engine, *,
            lock_wait_s: float = MIGRATION_LOCK_WAIT_S) -> tuple[str | None, str | None]:
    """Apply pending migrations; return (revisions before, revisions after).

    Runs under the migration lock and in one transaction (see ``migration_connection``): the
    revision is read after taking the lock, so a process that waited for another one's
    migration returns (heads, heads); a failure leaves the database as it was. Gives up
    after waiting ``lock_wait_s`` for locks that other processes hold. Once migrations
    ran, PostgreSQL's statistics are refreshed (``analyze``).
    """
    cfg = alembic_config(engine)
    with unavailable_as_error(engine):
        # One of the engine's own connections first: it switches a new SQLite file to WAL
        # (the migrator's does not), so that processes started after `mammo db upgrade`
        # find it switched and never race for it.
        check_connection_options(engine)
    before_after = _migrate(engine, cfg, lock_wait_s)
    if before_after[0] != before_after[1]:
        # Migrations rewrite and index tables: the planner's statistics (if any) are then
        # out of date, and a restored database migrated here never had them.
        analyze(engine)
    return before_after


def _migrate(engine: Engine, cfg: Config,
             lock_wait_s: float) -> tuple[str | None, str | None]:
    with (unavailable_as_error(engine),
          migration_connection(engine, lock_wait_s=lock_wait_s) as conn):
        before = _revisions_on(conn)
        if before == head_revisions(engine):
            return _describe(before), _describe(before)
        require_ours(conn, before, _scripts(engine), shown=_shown(engine))
        broken_before = foreign_key_violations(conn)
        cfg.attributes["connection"] = conn
        try:
            retried_while_blocked(conn, lambda: command.upgrade(cfg, "heads"),
                                  lock_wait_s=lock_wait_s)
        except MigrationBlocked as blocked:
            raise _migration_failed(
                engine, before,
                f"it waited {blocked.waited_s:.0f} s for a lock held by {blocked.holder}",
                remedy="stop that process, or wait for it to finish, and run the command "
                       "(or `mammo db upgrade`) again") from None
        except DBAPIError as exc:
            # The server went away (unreachable) or the file is damaged: the migration is not
            # what broke, and unavailable_as_error says what did.
            if exc.connection_invalidated or is_corruption(exc):
                raise
            raise _migration_failed(engine, before, _statement_error(exc)) from exc
        broken = foreign_key_violations(conn) - broken_before
        if broken:
            table, rowid, parent = min(broken, key=str)
            raise _migration_failed(engine, before, (
                f"{len(broken)} row(s) would point at missing rows (first: {table} row "
                f"{rowid} -> {parent})"))
        return _describe(before), _describe(_revisions_on(conn))


def _revisions_on(conn: Connection) -> frozenset[str]:
    return frozenset(MigrationContext.configure(conn).get_current_heads())


def _statement_error(exc: DBAPIError) -> str:
    statement = " ".join((exc.statement or "").split())
    shown = statement if len(statement) <= 120 else statement[:117] + "..."
    return f"{_first_line(exc.orig)} in `{shown}`" if shown else _first_line(exc.orig)


def _migration_failed(engine: Engine, before: frozenset[str], reason: str, *,
                      remedy: str = "report this message to the maintainers",
                      ) -> MigrationError:
    return MigrationError(
        f"Migrating the database at {_shown(engine)} from revision {_describe(before) or 'empty'} "
        f"to {_describe(head_revisions(engine))} failed: {reason}. Nothing was changed (the "
        f"migration runs in one transaction); {remedy}.")


# The tables the queries of a year's data plan from statistics (shared.queries, the
# worklist, the exam refresh): PostgreSQL has none for a table before its first ANALYZE, and
# autovacuum takes its time after a restore, a migration or a first busy night.
_ANALYZED_TABLES = ("images", "predictions")
# ANALYZE takes a lock that only VACUUM, another ANALYZE or a schema change contend for:
# waiting longer for it than this is not worth holding up a start or an upgrade.
_ANALYZE_LOCK_WAIT = "5s"


def analyze(engine: Engine) -> bool:
    """Refresh PostgreSQL's planner statistics of every table of the schema (a few seconds
    for a year's data, reading a sample of each table; SQLite: nothing). Best effort:
    False, logged, when it could not run. Without statistics PostgreSQL plans the reports'
    queries for tables of unknown size: `mammo report worklist` took 161 s at a year's
    data before the first ANALYZE, 27.5 s after."""
    if engine.dialect.name != "postgresql":
        return False
    tables = ", ".join(engine.dialect.identifier_preparer.quote(t.name)
                       for t in Base.metadata.sorted_tables)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_ANALYZE_LOCK_WAIT}'")
            conn.exec_driver_sql(f"ANALYZE {tables}")
    except DBAPIError as exc:
        log.warning("ANALYZE of the database at %s did not run (%s): the planner goes on "
                    "with the statistics it has until autovacuum analyses the tables",
                    _shown(engine), _first_line(exc.orig))
        return False
    return True


def analyze_if_never_analyzed(engine: Engine) -> bool:
    """``analyze`` when PostgreSQL never analysed the images or predictions table (neither
    ANALYZE nor autovacuum: a freshly restored or migrated database); whether it ran."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        with engine.connect() as conn:
            never = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY(%(tables)s)"
                " AND schemaname = current_schema()"
                " AND last_analyze IS NULL AND last_autoanalyze IS NULL",
                {"tables": list(_ANALYZED_TABLES)}).scalar_one()
    except DBAPIError as exc:
        log.warning("could not tell whether the database at %s was ever analysed (%s)",
                    _shown(engine), _first_line(exc.orig))
        return False
    if not never:
        return False
    log.info("the database at %s was never analysed (a restored or migrated database): "
             "running ANALYZE for the query planner", _shown(engine))
    return analyze(engine)


def ensure_schema(engine: Engine) -> None:
    """Migrate on first use; cheap when the schema is already current."""
    with unavailable_as_error(engine):
        check_connection_options(engine)
        if current_revisions(engine) == head_revisions(engine):
            return
    before, after = upgrade(engine)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
