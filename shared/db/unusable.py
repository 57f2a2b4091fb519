"""Databases this release reaches but cannot use: a file that is not SQLite or is
corrupted.

Each is one sentence and the database exit code: none is a bug, and no retry fixes it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import URL
from sqlalchemy.exc import DBAPIError

from shared.errors import DatabaseUnusableError, first_line

# SQLite's primary result codes (the low byte of an extended code) for a damaged file.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_corruption(exc: DBAPIError) -> bool:
    """SQLite found the file is not a database, or a damaged page in it ("file is not a
    database", "database disk image is malformed"), at connect or mid-command."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def corruption_as_error(url: URL, exc: DBAPIError) -> DatabaseUnusableError | None:
    """The error for a corrupted SQLite file; None when ``exc`` is something else."""
    if not is_corruption(exc):
        return None
    where = Path(url.database).resolve() if url.database else url.database
    reason = first_line(exc.orig) or type(exc.orig).__name__
    return DatabaseUnusableError(
        f"{where} is not a SQLite database, or it is corrupted: {reason}; point "
        f"MAMMO_DATABASE_URL at the pipeline's database or restore it from a backup.")
