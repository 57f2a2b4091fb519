"""What a reachable server that will not do the work means, by its SQLSTATE: one place
for the CLI's one-line errors (``shared.db.engine.failed_command_as_error``) and the
worker's wait-and-retry (``worker.pipeline``).

A PostgreSQL server that refuses writes answers every statement that writes with an error
that is not an ``OperationalError``: a read-only server or database (25006, an
``InternalError``: a standby after a failover, ``default_transaction_read_only`` on) or a
role without a privilege (42501, a ``ProgrammingError``: a GRANT missed). Neither is the
work's fault, and both pass once an administrator acts: a worker hands its chunk back and
retries, as for a server that is away, instead of failing the chunk and dropping its
message.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.errors import first_line
from shared.reachability import NO_FREE_SLOT, unreachable_reason

READ_ONLY = "25006"  # read_only_sql_transaction
INSUFFICIENT_PRIVILEGE = "42501"
QUERY_CANCELED = "57014"  # query_canceled: statement_timeout, or pg_cancel_backend()
LOCK_NOT_AVAILABLE = "55P03"  # lock_not_available: lock_timeout


@dataclass(frozen=True)
class Refusal:
    what: str  # what is wrong, in a few words (a worker's log, `mammo status --health`)
    remedy: str  # what to do about it, for a command's one-line error


REFUSING_WRITES = {
    INSUFFICIENT_PRIVILEGE: Refusal(
        "this database user may not write (it lacks a privilege)",
        "This database role lacks a privilege the command needs: have the database's owner "
        "grant it (e.g. GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
        "TO the role, and USAGE on its sequences), or set MAMMO_DATABASE_URL to a role that "
        "has it"),
    READ_ONLY: Refusal(
        "the database refuses writes (read-only: a standby, or default_transaction_read_only "
        "on)",
        "The server or database is read-only (a standby, or default_transaction_read_only "
        "on): set MAMMO_DATABASE_URL to the writable primary"),
}
# Errors of a reachable server that say what to do, though the work itself wrote nothing.
_STOPPED = {
    QUERY_CANCELED: Refusal(
        "the server cancelled the statement (statement_timeout)",
        "The server cancelled the statement after the statement_timeout set for this role "
        "or database (or an administrator cancelled it): raise or unset that timeout (ALTER "
        "ROLE ... RESET statement_timeout, or ALTER DATABASE ...) and run the command again"),
    LOCK_NOT_AVAILABLE: Refusal(
        "a table's lock held by another session",
        "Another session holds a lock on a table this command reads (a LOCK TABLE, a "
        "migration, a long ALTER TABLE): find it in pg_locks and pg_stat_activity, end it "
        "or let it finish, and run the command again"),
}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver's error, or of the one a SQLAlchemy error wraps."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None)
    return str(code) if code else None


def write_refusal(exc: BaseException) -> Refusal | None:
    """Why the server refuses to write, when that is what ``exc`` says; else None."""
    return REFUSING_WRITES.get(sqlstate(exc) or "")


# A connection refused for want of a slot: no fault of the URL, and the server is running.
# Told by the server's words (``shared.reachability``), not by SQLSTATE 53300, which a role's
# or a database's CONNECTION LIMIT also gives (raising max_connections would not help).
NO_FREE_SLOT_REMEDY = (f"{NO_FREE_SLOT} (max_connections reached): close idle sessions, "
                       "raise max_connections, or put a pooler (PgBouncer) in front")


def server_remedy(exc: BaseException) -> str | None:
    """What to do about an error whose SQLSTATE says it (a refused write, a statement the
    server cancelled), or a connection refused for want of a free slot; None for any
    other."""
    code = sqlstate(exc) or ""
    known = REFUSING_WRITES.get(code) or _STOPPED.get(code)
    if known:
        return known.remedy
    if unreachable_reason(exc) == NO_FREE_SLOT:
        return NO_FREE_SLOT_REMEDY
    return None


def unavailable_reason(exc: DBAPIError) -> str | None:
    """Why the database cannot take a worker's work now, to retry later: a server that is
    away (an ``OperationalError``: the driver's message) or one that refuses writes (what is
    wrong, then the server's first line); None for an error retrying cannot cure (a bug)."""
    refusal = write_refusal(exc)
    if refusal is not None:
        return f"{refusal.what}: {first_line(exc.orig) or type(exc.orig).__name__}"
    if isinstance(exc, OperationalError):
        return str(exc.orig)
    return None


def discard_read_only_connection(context: ExceptionContext) -> None:
    """``handle_error``: treat a read-only refusal as a lost connection, so that the pool
    discards it, and the connections opened with it.

    A session takes ``default_transaction_read_only`` from the database's (or role's)
    setting when it connects, and keeps it: a pooled connection opened while an ``ALTER
    DATABASE ... SET default_transaction_read_only = on`` was in force refused writes after
    it was turned off, and a worker kept failing until restarted. Discarded, the next
    connection reads the setting now in force (and after a failover, reaches the server
    that now answers at the address)."""
    if sqlstate(context.original_exception) == READ_ONLY:
        context.is_disconnect = True
