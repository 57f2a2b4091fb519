"""Alembic environment: runs on the connection handed over by ``shared.db.engine.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from shared.db.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables.
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic revision --autogenerate` from a developer shell
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///mammo.db")
    with engine.begin() as conn:
        _run(conn)
