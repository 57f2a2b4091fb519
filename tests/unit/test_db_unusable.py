"""A database this release reaches but cannot use (a newer schema, a file that is not
SQLite or is damaged, another application's database) is one line and exit 7, never a
traceback, and is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from tests.helpers.cli import invoke_cli

_REMEDY = ("point MAMMO_DATABASE_URL at the pipeline's database or restore it from a "
           "backup.")


def _pipeline_database(url: str) -> None:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    engine.dispose()


def _execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


@pytest.mark.parametrize("wal", ["true", "false"])
@pytest.mark.parametrize("damage", ["not sqlite", "truncated"])
def test_a_file_that_is_not_a_sqlite_database_says_so(
        damage: str, wal: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    _pipeline_database(f"sqlite:///{good}")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"hello\n" if damage == "not sqlite" else good.read_bytes()[:3000])
    reason = "file is not a database" if damage == "not sqlite" else "malformed"
    for command in (["results"], ["db", "upgrade"], ["models", "list"]):
        code, out = invoke_cli(command, monkeypatch, tmp_path, sqlite_wal=wal,
                               database_url=f"sqlite:///{bad}")
        assert code == ExitCode.DATABASE_UNAVAILABLE, (command, out)
        assert f"{bad} is not a SQLite database, or it is corrupted: " in out
        assert reason in out and _REMEDY in out


def test_a_page_found_damaged_mid_command_says_so(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    # The schema check reads other pages: only the results query meets the damaged one.
    db = tmp_path / "mammo.db"
    _pipeline_database(f"sqlite:///{db}")
    _execute(f"sqlite:///{db}", "INSERT INTO batches (id, name, priority, mode, submitted, "
             "duplicates) VALUES (1, 'night', 'routine', 'dicom', 0, 0)")
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        root = conn.execute(text("SELECT rootpage FROM sqlite_master "
                                 "WHERE name = 'images'")).scalar_one()
        page = conn.execute(text("PRAGMA page_size")).scalar_one()
    engine.dispose()
    with db.open("r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=f"sqlite:///{db}")
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert "is corrupted: database disk image is malformed" in out and _REMEDY in out
