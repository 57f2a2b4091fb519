"""A setting that cannot work is one line and exit 4 (or 7/8 when a server is down), and no
URL shown to a person ever carries a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.urls import redact_url
from tests.helpers.cli import invoke_cli

SECRET = "S3cretPW"


@pytest.mark.parametrize(("url", "expected"), [
    ("garbage", "is not a database URL"),
    (f"mysql://u:{SECRET}@127.0.0.1:1/x", "needs a database driver that is not installed"),
    (f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x?badopt=1",
     'invalid connection option "badopt"'),
])
def test_an_unusable_database_url_is_a_configuration_error(
        url: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.CONFIG, out
    assert expected in out and SECRET not in out
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("url", [
    "sqlite:///", "sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:",
    "sqlite:///file::memory:?uri=true", "sqlite:///file::memory:?cache=shared&uri=true",
    "sqlite:///file:shared?mode=memory&cache=shared&uri=true", "sqlite:///file:?uri=true",
    "sqlite:///file:/m.db?vfs=memdb&uri=true",
])
@pytest.mark.parametrize("command", [["status", "--health"], ["run", "x.png"]])
def test_an_in_memory_sqlite_database_is_a_configuration_error(
        url: str, command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Each process, thread and connection opened its own empty database: the health check
    # said reachable, and `mammo run` sat at "classifying 0/1" for minutes, then exited 7
    # with "no such table: model_versions" and "they stay queued in the database".
    (tmp_path / "x.png").write_bytes(b"")
    code, out = invoke_cli(command, monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.CONFIG, out
    assert "MAMMO_DATABASE_URL in the environment" in out
    assert "is an in-memory SQLite database, which the run's processes and threads cannot " \
           "share" in out
    assert "give a file path (sqlite:///path/to/mammo.db) or leave MAMMO_DATABASE_URL unset " \
           "for ./mammo.db" in out
    assert len(out.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("file*"))


@pytest.mark.parametrize("url", [
    "sqlite:///mammo.db", "sqlite:////abs/m.db", "sqlite:///file:m.db?uri=true",
    "sqlite:///file:///abs/m.db?mode=ro&uri=true",
    # Without uri=true SQLite reads no URI: a file of that name in the working directory.
    "sqlite:///file::memory:", "sqlite:///m.db?mode=memory",
])
def test_a_sqlite_file_is_not_taken_for_an_in_memory_database(url: str) -> None:
    assert Settings(database_url=url, _env_file=None).database_url == url  # type: ignore[call-arg]


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "POSTGRES"])
def test_a_plain_postgres_url_uses_the_installed_driver(
        scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # postgres:// was "a database driver that is not installed" (SQLAlchemy has no such
    # dialect; postgresql:// means psycopg2), though psycopg, the one supported, was.
    given = f"{scheme}://u:p%40{SECRET}@127.0.0.1:1/m?sslmode=disable"
    assert Settings(database_url=given, _env_file=None).database_url == (  # type: ignore[call-arg]
        f"postgresql+psycopg://u:p%40{SECRET}@127.0.0.1:1/m?sslmode=disable")
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=given)
    assert code == ExitCode.DATABASE_UNAVAILABLE, out  # the server, reached for: none there
    assert "Cannot reach the database at postgresql+psycopg://u:***@127.0.0.1:1/m" in out


def test_an_unknown_database_type_is_not_called_a_missing_driver(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url="postgress://h/db")
    assert code == ExitCode.CONFIG, out
    assert "names an unknown database type (postgress://)" in out and "installed" not in out


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "reddis://127.0.0.1:6379/0"])
def test_a_broker_url_that_is_no_broker_gets_a_scheme_hint(
        url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # kombu's "No such transport" was answered with advice about passwords.
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, broker_url=url)
    assert code == ExitCode.CONFIG, out
    scheme = url.split(":", 1)[0]
    assert f"MAMMO_BROKER_URL in the environment starts with {scheme}://" in out
    assert "redis://host:6379/0" in out and "password" not in out.lower()


def test_an_unknown_log_level_in_the_environment_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, log_level="LOUD")
    assert code == ExitCode.CONFIG and "MAMMO_LOG_LEVEL in the environment must be one of" in out


def test_an_unknown_log_level_flag_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    code, out = invoke_cli(["--log-level", "LOUD", "results"], monkeypatch, tmp_path)
    assert code == ExitCode.USAGE and "--log-level" in out
    code, _out = invoke_cli(["--log-level", "debug", "status"], monkeypatch, tmp_path)
    assert code == ExitCode.OK


def test_a_query_string_database_password_is_masked(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    url = f"postgresql+psycopg://mammo@127.0.0.1:1/m?password={SECRET}"
    code, out = invoke_cli(["results"], monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.DATABASE_UNAVAILABLE
    assert "password=***" in out and SECRET not in out


def test_a_query_string_broker_password_is_one_line_and_masked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # kombu cannot parse a query-string password at all: a setting to fix (exit 4), not a
    # server to wait for.
    code, out = invoke_cli(["submit", str(tmp_path)], monkeypatch, tmp_path,
                           broker_url=f"redis://127.0.0.1:1/0?password={SECRET}")
    assert code == ExitCode.CONFIG, out
    assert "password=***" in out and SECRET not in out and "redis://:PASSWORD@" in out


def test_an_unreachable_broker_message_is_masked_and_ends_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["submit", str(tmp_path)], monkeypatch, tmp_path,
                           broker_url=f"redis://:{SECRET}@127.0.0.1:1/0")
    assert code == ExitCode.BROKER_UNAVAILABLE
    assert SECRET not in out and ".." not in out


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:///mammo.db", "sqlite:///mammo.db"),
    (f"postgresql://u:{SECRET}@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
    (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
    (f"redis://h/0?db=1&Password={SECRET}&x=1", "redis://h/0?db=1&Password=***&x=1"),
    (f"postgresql://u@h/db?sslpassword={SECRET}", "postgresql://u@h/db?sslpassword=***"),
    (f"postgresql://u:a@{SECRET}@h/db", "postgresql://u:***@h/db"),
])
def test_redact_url_masks_userinfo_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["notaurl", "redis-host:6379", f":{SECRET}@redis-host"])
def test_a_broker_url_without_a_scheme_is_a_configuration_error(
        url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # kombu would take it for an AMQP host name: "unreachable" (exit 8) for a typo.
    code, out = invoke_cli(["submit", str(tmp_path)], monkeypatch, tmp_path, broker_url=url)
    assert code == ExitCode.CONFIG, out
    assert "MAMMO_BROKER_URL in the environment is not a URL" in out and SECRET not in out
    assert len(out.strip().splitlines()) == 1
