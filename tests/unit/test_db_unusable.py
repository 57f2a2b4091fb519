"""A database this release reaches but cannot use (a newer schema, a file that is not
SQLite or is damaged, another application's database) is one line and exit 7, never a
traceback, and is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, head_revisions
from tests.helpers.cli import invoke_cli

_REMEDY = ("point MAMMO_DATABASE_URL at the pipeline's database or restore it from a "
           "backup.")


def _url(backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> str:
    return sqlite_url if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))


def _pipeline_database(url: str) -> None:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    engine.dispose()


def _execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    engine.dispose()
    return names


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("command", [["results"], ["db", "upgrade"]], ids=" ".join)
def test_a_schema_from_a_newer_release_names_both_revisions(
        backend: str, command: list[str], request: pytest.FixtureRequest, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What a rollback of the software meets: the newer release moved one head on.
    url = _url(backend, request, sqlite_url)
    _pipeline_database(url)
    heads = sorted(head_revisions(create_engine(url)))
    _execute(url, f"UPDATE alembic_version SET version_num = '0099' "
                  f"WHERE version_num = '{heads[-1]}'")
    code, out = invoke_cli(command, monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert (f"is at schema revision 0099, newer than this release knows (latest "
            f"{'+'.join(heads)}): a newer release migrated it. Install that release on "
            "this host too") in out
    assert "restore the backup taken before the upgrade" in out
    assert "report this message" not in out


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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_another_applications_tables_name_the_clash_and_stay_alone(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = _url(backend, request, sqlite_url)
    _execute(url, "CREATE TABLE images (x INTEGER)")
    _execute(url, "CREATE TABLE invoices (x INTEGER)")
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert "is not a mammo pipeline database: it already has table(s) images that the " \
           "pipeline would create" in out
    assert "Point MAMMO_DATABASE_URL at the pipeline's database" in out
    assert _tables(url) == {"images", "invoices"}


def test_another_applications_alembic_revision_is_not_called_newer(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> None:
    _execute(sqlite_url, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    _execute(sqlite_url, "INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=sqlite_url)
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert ("not a mammo pipeline database: it is at schema revision ae1027a6acf, unknown "
            "to the pipeline, and has none of the pipeline's tables") in out
    assert "newer" not in out


def test_activate_says_so_before_loading_the_model(tmp_path: Path) -> None:
    """Seconds of TensorFlow loading, then the database error, told the operator nothing
    they could not have been told at once."""
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 200)
    probe = ("import sys\nfrom producer.cli.main import cli\n"
             "try:\n    cli(['models', 'activate', 'default'])\n"
             "except SystemExit as e:\n    print(e.code, 'tensorflow' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
    env["MAMMO_DATABASE_URL"] = f"sqlite:///{tmp_path / 'junk.db'}"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.stdout.split() == [str(int(ExitCode.DATABASE_UNAVAILABLE)), "False"], done
