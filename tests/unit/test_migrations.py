"""Alembic migrations and the ORM models describe the same schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, head_revisions, upgrade
from shared.db.schema import Base


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_models(backend: str, request: pytest.FixtureRequest,
                                 sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"schema.py and the migrations disagree; add a revision: {diff}"


def test_upgrade_is_idempotent(sqlite_url: str) -> None:
    engine = create_db_engine(Settings(database_url=sqlite_url, _env_file=None))  # type: ignore[call-arg]
    first = upgrade(engine)
    second = upgrade(engine)
    assert first[0] is None and first[1] is not None
    assert second[0] == second[1] == first[1]
    assert set(first[1].split("+")) == set(head_revisions(engine))
