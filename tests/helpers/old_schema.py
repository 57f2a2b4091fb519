"""A database at an older schema revision, as an earlier release left it."""

from __future__ import annotations

from collections.abc import Iterable

from alembic import command
from sqlalchemy import create_engine, text

from shared.db.engine import alembic_config


def migrated_to(url: str, revisions: Iterable[str], *sql: str) -> None:
    """Migrate ``url`` by plain Alembic to each of ``revisions`` (the heads an older release
    had), as that release did, then run ``sql`` in the same transaction."""
    engine = create_engine(url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        for revision in revisions:
            command.upgrade(cfg, revision)
        for statement in sql:
            conn.execute(text(statement))
    engine.dispose()


def downgraded_to(url: str, revision: str) -> None:
    """Downgrade ``url`` by plain Alembic to ``revision`` (e.g. ``0016-1``: one step below
    0016 on its branch), as a database before that migration was."""
    engine = create_engine(url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    engine.dispose()
