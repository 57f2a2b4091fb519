"""Databases this release reaches but cannot use: a file that is not SQLite or is
corrupted, another application's database, a schema written by a newer release.

Each is one sentence and the database exit code: none is a bug, and no retry fixes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, inspect
from sqlalchemy.exc import DBAPIError

from shared.db.schema import Base
from shared.errors import DatabaseUnusableError, first_line

# SQLite's primary result codes (the low byte of an extended code) for a damaged file.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def sqlite_result_code(exc: DBAPIError) -> int | None:
    """SQLite's primary result code of ``exc`` (the low byte of its extended code); None for
    another database's error."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corruption(exc: DBAPIError) -> bool:
    """SQLite found the file is not a database, or a damaged page in it ("file is not a
    database", "database disk image is malformed"), at connect or mid-command."""
    return sqlite_result_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def corruption_as_error(url: URL, exc: DBAPIError) -> DatabaseUnusableError | None:
    """The error for a corrupted SQLite file; None when ``exc`` is something else."""
    if not is_corruption(exc):
        return None
    where = Path(url.database).resolve() if url.database else url.database
    reason = first_line(exc.orig) or type(exc.orig).__name__
    return DatabaseUnusableError(
        f"{where} is not a SQLite database, or it is corrupted: {reason}; point "
        f"MAMMO_DATABASE_URL at the pipeline's database or restore it from a backup.")


def require_ours(conn: Connection, revisions: frozenset[str], script: ScriptDirectory, *,
                 shown: str) -> None:
    """Refuse, before migrating, a database whose revisions this release does not know or
    whose tables it would clash with; ``shown`` is its URL without a password.

    A rollback of the software meets a newer schema (an unknown revision next to the
    pipeline's tables); another application's database has an unknown revision and none
    of them, or no revision and some tables of the same names.
    """
    unknown = revisions - {rev.revision for rev in script.walk_revisions()}
    clashing = sorted(set(inspect(conn).get_table_names()) & set(Base.metadata.tables))
    if unknown and clashing:
        raise DatabaseUnusableError(
            f"The database {shown} is at schema revision {_joined(unknown)}, newer than "
            f"this release knows (latest {_joined(script.get_heads())}): a newer release "
            f"migrated it. Install that release on this host too (every process on one "
            f"database runs one release); to go back to this one instead, restore the "
            f"backup taken before the upgrade (README, \"Upgrading\").")
    if unknown:
        raise _not_ours(shown, f"it is at schema revision {_joined(unknown)}, unknown to "
                               "the pipeline, and has none of the pipeline's tables")
    if not revisions and clashing:
        raise _not_ours(shown, f"it already has table(s) {', '.join(clashing)} that the "
                               "pipeline would create, and no pipeline schema revision")


def _not_ours(shown: str, evidence: str) -> DatabaseUnusableError:
    return DatabaseUnusableError(
        f"The database {shown} is not a mammo pipeline database: {evidence}. Point "
        f"MAMMO_DATABASE_URL at the pipeline's database, or at a new SQLite file or an "
        f"empty PostgreSQL database.")


def _joined(revisions: Iterable[str]) -> str:
    return "+".join(sorted(revisions))
