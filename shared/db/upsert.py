"""Dialect-aware INSERT ... ON CONFLICT, for SQLite and PostgreSQL.

Idempotency is by construction (unique constraints plus these statements), never by
"select, then insert if missing", which two workers can both pass at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(
        f"Database dialect {dialect!r} is not supported (use SQLite or PostgreSQL)")


def insert_missing(
    session: Session, table: Any, rows: Sequence[dict[str, Any]], conflict: Sequence[str],
    returning: Any,
) -> list[Any]:
    """Insert rows whose ``conflict`` columns are new; return ``returning`` for those only.

    The rows go as parameters of one cached statement (SQLAlchemy batches them into
    multi-row INSERTs), not as a fresh VALUES list compiled per call: compiling a
    500-row VALUES clause cost more than reading the 500 files' headers.
    """
    if not rows:
        return []
    stmt = _insert(session, table)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict)).returning(returning)
    return list(session.execute(stmt, list(rows)).scalars())


def upsert(
    session: Session, table: Any, rows: Sequence[dict[str, Any]], conflict: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert rows, or overwrite ``update`` columns of the row that already holds the key."""
    if not rows:
        return
    stmt = _insert(session, table).values(list(rows))
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict), set_={col: stmt.excluded[col] for col in update},
    )
    session.execute(stmt)


def upsert_returning_ids(
    session: Session, table: Any, rows: Sequence[dict[str, Any]], conflict: str,
) -> dict[Any, int]:
    """Insert rows or find the existing ones, in one statement; {``conflict`` value: id}."""
    if not rows:
        return {}
    stmt = _insert(session, table)
    # A no-op update makes RETURNING yield the existing row's id on conflict.
    stmt = stmt.on_conflict_do_update(
        index_elements=[conflict], set_={conflict: stmt.excluded[conflict]},
    ).returning(getattr(table, conflict), table.id)
    return {key: int(row_id) for key, row_id in session.execute(stmt, list(rows)).all()}


def upsert_returning_id(
    session: Session, table: Any, row: dict[str, Any], conflict: Sequence[str],
) -> int:
    """Insert one row or find the existing one; return its primary key."""
    stmt = _insert(session, table).values(row)
    # A no-op update makes RETURNING yield the existing row's id on conflict.
    first = conflict[0]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict), set_={first: stmt.excluded[first]},
    ).returning(table.id)
    return int(session.execute(stmt).scalar_one())
