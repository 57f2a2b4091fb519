"""Engine and session factories, plus schema migration on first use.

Engines are built per process (after fork), never at import: a pooled connection shared
across a fork corrupts both sides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url
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

from shared.config import Settings
from shared.db.migration_connection import foreign_key_violations, migration_connection
from shared.db.unusable import corruption_as_error, is_corruption, require_ours
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


def create_db_engine(settings: Settings) -> Engine:
    url = settings.database_url
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60})
            _configure_sqlite(engine, wal=settings.sqlite_wal)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    except (ImportError, NoSuchModuleError) as exc:
        # SQLAlchemy imports the dialect's driver here (mysql:// wants MySQLdb, say).
        raise ConfigurationError(
            f"MAMMO_DATABASE_URL {redact_url(url)} needs a database driver that is not "
            f"installed ({_first_line(exc)}). Supported: sqlite:///FILE and "
            f"postgresql+psycopg://user@host/db (pip install '.[postgres]').") from None
    except ArgumentError as exc:
        raise ConfigurationError(
            f"MAMMO_DATABASE_URL {redact_url(url)} is not usable: {_first_line(exc)}") from None


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if wal:
            # WAL lets the producer read while a worker writes; unsafe on network shares.
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()


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
        raise DatabaseUnavailableError(
            f"Cannot reach the database at {_shown(engine)}: "
            f"{_first_line(exc.orig)}. {_remedy(engine)}") from exc


def _remedy(engine: Engine) -> str:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return "Check MAMMO_DATABASE_URL and that the server is running."
    # A SQLite file has no server: what fails is its folder (missing, read-only).
    folder = Path(database).resolve().parent
    return (f"The SQLite file {Path(database).resolve()} needs a folder this user can write "
            f"({folder}{' does not exist' if not folder.is_dir() else ''}): run from a "
            "writable folder, or set MAMMO_DATABASE_URL.")


def check_connection_options(engine: Engine) -> None:
    """Open one connection, turning a driver's refusal of the URL's options into a
    ``ConfigurationError``.

    psycopg rejects an unknown ``?option=`` only when connecting, as a ProgrammingError: no
    retry can fix that, unlike an unreachable server (OperationalError, left to the caller).
    """
    try:
        engine.connect().close()
    except (ProgrammingError, InterfaceError) as exc:
        raise ConfigurationError(
            f"The database driver refused MAMMO_DATABASE_URL {_shown(engine)}: "
            f"{_first_line(exc.orig)}. Fix the URL's options.") from None


def failed_command_as_error(url: str, exc: DatabaseError) -> UserFacingError | None:
    """The error for a database that was reached and then refused the work (a read-only
    SQLite file, a full disk, a server gone mid-command) or turned out corrupted: one line,
    password hidden. None for anything else (an IntegrityError, say): a bug."""
    unusable = corruption_as_error(make_url(url), exc)
    if unusable is not None or not isinstance(exc, OperationalError):
        return unusable
    shown = redact_url(make_url(url).render_as_string(hide_password=True))
    return DatabaseUnavailableError(
        f"The database at {shown} refused the operation: {_first_line(exc.orig)}. Check "
        f"MAMMO_DATABASE_URL, that the server is running and that this user may write to "
        f"it (and, for SQLite, its folder); work already stored is kept.")


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


def head_revisions(engine: Engine) -> frozenset[str]:
    # Several heads are allowed: independent features add migrations on parallel branches.
    return frozenset(_scripts(engine).get_heads())


def _scripts(engine: Engine) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(engine))


def _describe(revisions: frozenset[str]) -> str | None:
    return "+".join(sorted(revisions)) or None


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply pending migrations; return (revisions before, revisions after).

    Runs under the migration lock and in one transaction (see ``migration_connection``): the
    revision is read after taking the lock, so a process that waited for another one's
    migration returns (heads, heads); a failure leaves the database as it was.
    """
    cfg = alembic_config(engine)
    with unavailable_as_error(engine), migration_connection(engine) as conn:
        before = _revisions_on(conn)
        if before == head_revisions(engine):
            return _describe(before), _describe(before)
        require_ours(conn, before, _scripts(engine), shown=_shown(engine))
        broken_before = foreign_key_violations(conn)
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "heads")
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


def _migration_failed(engine: Engine, before: frozenset[str], reason: str) -> MigrationError:
    return MigrationError(
        f"Migrating the database at {_shown(engine)} from revision {_describe(before) or 'empty'} "
        f"to {_describe(head_revisions(engine))} failed: {reason}. Nothing was changed (the "
        f"migration runs in one transaction); report this message to the maintainers.")


def ensure_schema(engine: Engine) -> None:
    """Migrate on first use; cheap when the schema is already current."""
    with unavailable_as_error(engine):
        check_connection_options(engine)
        if current_revisions(engine) == head_revisions(engine):
            return
    before, after = upgrade(engine)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
