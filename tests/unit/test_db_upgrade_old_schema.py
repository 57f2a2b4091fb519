"""A database made by an older release, holding results, upgrades to the current schema with
its rows intact; a migration that fails changes nothing and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, head_revisions, upgrade
from shared.db.schema import Base
from tests.helpers.cli import invoke_cli
from tests.helpers.old_schema import migrated_to

# Every head but 0003 (model_versions.active, predictions.heatmap_png): 0003 rebuilds
# model_versions on SQLite, the table predictions' rows point at. 0007 follows 0003.
OLD_REVISIONS = ("0002", "0004", "0006")

ROWS = (
    "INSERT INTO batches (id, name, priority, mode, submitted, duplicates) "
    "VALUES (1, 'night', 'normal', 'dicom', 1, 0)",
    "INSERT INTO model_versions (id, name, version, sha256, preprocessing_version, classes, "
    "input_size, path) VALUES (1, 'default', '1.0.0', 'ab12', 'pp1', "
    "'[\"normal\", \"benign\", \"malignant\"]', '[224, 224]', '/models/default/1.0.0')",
    "INSERT INTO images (id, identity, batch_id, source, format, state, attempts) "
    "VALUES (1, 'sha256:01', 1, '/in/a.dcm', 'dicom', 'done', 1)",
    "INSERT INTO predictions (id, image_id, model_version_id, preprocessing_version, label, "
    "p_normal, p_benign, p_malignant, suspicion, decode_ms, preprocess_ms, infer_ms, "
    "forward_pass_id, forward_pass_size) VALUES (1, 1, 1, 'pp1', 'malignant', 0.1, 0.2, 0.7, "
    "8, 1.0, 2.0, 3.0, 'fp-1', 16)",
)


def _old_database(url: str, *extra_sql: str) -> None:
    """The schema at OLD_REVISIONS, migrated by plain Alembic as the older release did, with
    one prediction in it."""
    migrated_to(url, OLD_REVISIONS, *ROWS, *extra_sql)


def _settings(url: str) -> Settings:
    return Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_old_database_with_a_prediction_upgrades_and_keeps_it(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    _old_database(url)
    engine = create_db_engine(_settings(url))

    before, after = upgrade(engine)

    assert before == "+".join(OLD_REVISIONS)
    assert after is not None and set(after.split("+")) == head_revisions(engine)
    with engine.connect() as conn:
        prediction = conn.execute(text(
            "SELECT image_id, model_version_id, label, p_malignant, suspicion, heatmap_png "
            "FROM predictions")).one()
        model = conn.execute(text("SELECT name, version, active FROM model_versions")).one()
        assert tuple(prediction) == (1, 1, "malignant", 0.7, 8, None)
        assert tuple(model) == ("default", "1.0.0", False)
        assert not [t for t in inspect(conn).get_table_names() if t.startswith("_alembic")]
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            # The app's connections still enforce foreign keys; only the migration's did not.
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_failed_migration_changes_nothing_and_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    # 0007 adds model_versions.bilateral: a column already there makes it fail, after 0003
    # has rebuilt model_versions and predictions in the same run.
    _old_database(f"sqlite:///{db}", "ALTER TABLE model_versions ADD COLUMN bilateral JSON")

    code, out = invoke_cli(["db", "upgrade"], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{db}")

    assert code == ExitCode.MIGRATION_FAILED, out  # not DATABASE_UNAVAILABLE: it was reached
    assert "Cannot reach" not in out
    assert "Migrating the database" in out and "from revision 0002+0004+0006" in out
    assert "duplicate column name: bilateral" in out and "Nothing was changed" in out
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) \
            == set(OLD_REVISIONS)
        tables = inspect(conn).get_table_names()
        assert not [t for t in tables if t.startswith("_alembic")]
        assert "active" not in {c["name"] for c in inspect(conn).get_columns("model_versions")}
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    engine.dispose()


def test_table_copy_left_by_an_earlier_failed_migration_is_cleared(sqlite_url: str) -> None:
    # What the older release left after the failure above: its batch copy of
    # model_versions, created and committed before the rebuild failed.
    _old_database(sqlite_url, "CREATE TABLE _alembic_tmp_model_versions (id INTEGER)")
    engine = create_db_engine(_settings(sqlite_url))

    before, after = upgrade(engine)

    assert before != after and after is not None
    with engine.connect() as conn:
        assert "_alembic_tmp_model_versions" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    engine.dispose()
