"""``mammo worker`` started while its servers are away waits; a setting to fix does not.

The command runs in-process against real servers (the shared Redis and PostgreSQL) and
ports where nothing listens. Its wait is the real one, with one change: the pause between
tries is recorded and then interrupted as Ctrl-C would be, so a test that expects no wait
fails at the first pause instead of waiting for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from producer.cli import commands_worker
from producer.cli.exit_codes import ExitCode
from shared import reachability
from tests.conftest import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, require_service
from tests.helpers.cli import invoke_cli
from tests.helpers.services import free_port

SECRET = "s3cret-Pw"


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The worker's pauses before trying again; the first one is interrupted (Ctrl-C)."""
    taken: list[float] = []

    def interrupted(seconds: float) -> None:
        taken.append(seconds)
        raise KeyboardInterrupt

    def wait(attempt: Callable[[], Any], **options: Any) -> Any:
        return reachability.wait_until_reachable(attempt, sleep=interrupted, **options)

    monkeypatch.setattr(commands_worker, "wait_until_reachable", wait)
    yield taken


def _worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str,
            **env: str) -> tuple[int, str]:
    env.setdefault("database_url", f"sqlite:///{tmp_path / 'w.db'}")
    return invoke_cli(["worker", *args], monkeypatch, tmp_path, **env)


@pytest.fixture
def shared_redis() -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    return f"{REDIS_HOST}:{REDIS_PORT}"


@pytest.fixture
def shared_postgres() -> str:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    return f"{PG_HOST}:{PG_PORT}"


def test_an_unreachable_broker_is_waited_for_and_ctrl_c_ends_the_wait(
        pauses: list[float], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING, logger="shared.reachability")
    code, out = _worker(monkeypatch, tmp_path,
                        broker_url=f"redis://:{SECRET}@127.0.0.1:{port}/0")
    assert code == ExitCode.OK, out
    assert pauses == [1]
    assert "stopped before it started; nothing was taken from the queue" in out
    [line] = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert line == (f"waiting for the message broker at redis://:***@127.0.0.1:{port}/0: "
                    "connection refused; the worker starts once it is reachable; retrying "
                    "in 1 s")


def test_an_unreachable_database_server_is_waited_for(
        pauses: list[float], redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING, logger="shared.reachability")
    code, out = _worker(monkeypatch, tmp_path, broker_url=redis_url,
                        database_url=f"postgresql+psycopg://mammo:{SECRET}@127.0.0.1:{port}/m")
    assert code == ExitCode.OK and pauses == [1], out
    [line] = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert line.startswith(f"waiting for the database at postgresql+psycopg://mammo:***@"
                           f"127.0.0.1:{port}/m: connection refused;"), line
    assert SECRET not in out + line


def test_no_wait_at_all_exits_8_as_before(pauses: list[float], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    code, out = _worker(monkeypatch, tmp_path, "--wait-for-servers", "0",
                        broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert code == ExitCode.BROKER_UNAVAILABLE, out
    assert pauses == [] and "Cannot reach the message broker" in out


@pytest.mark.parametrize(("url", "said"), [
    ("redis://{server}/99", "DB index is out of range"),
    ("redis://nobody-here:{secret}@{server}/0", "invalid username-password pair"),
])
def test_a_broker_setting_to_fix_exits_8_at_once(
        url: str, said: str, pauses: list[float], shared_redis: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _worker(monkeypatch, tmp_path,
                        broker_url=url.format(server=shared_redis, secret=SECRET))
    assert code == ExitCode.BROKER_UNAVAILABLE, out
    assert pauses == [] and said in out and SECRET not in out


@pytest.mark.parametrize(("path", "said"), [
    ("/mammo_no_such_database_here", 'database "mammo_no_such_database_here" does not exist'),
    ("/postgres?user=mammo_no_such_role", 'role "mammo_no_such_role" does not exist'),
])
def test_a_database_setting_to_fix_exits_7_at_once(
        path: str, said: str, pauses: list[float], redis_url: str, shared_postgres: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    user = "" if "user=" in path else "postgres@"
    code, out = _worker(monkeypatch, tmp_path, broker_url=redis_url,
                        database_url=f"postgresql+psycopg://{user}{shared_postgres}{path}")
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert pauses == [] and said in out


def test_a_sqlite_file_has_no_server_to_wait_for(
        pauses: list[float], redis_url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    code, out = _worker(monkeypatch, tmp_path, broker_url=redis_url,
                        database_url=f"sqlite:///{tmp_path / 'no-such-folder' / 'm.db'}")
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert pauses == [] and "no-such-folder" in out


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=x"])
def test_a_broker_url_that_cannot_be_used_exits_4_at_once(
        url: str, pauses: list[float], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _worker(monkeypatch, tmp_path, broker_url=url)
    assert code == ExitCode.CONFIG, out
    assert pauses == []


@pytest.mark.parametrize("url", ["postgress://u@127.0.0.1:1/m", "mysql://u@127.0.0.1:1/m"])
def test_a_database_url_that_cannot_be_used_exits_4_at_once(
        url: str, pauses: list[float], redis_url: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    code, out = _worker(monkeypatch, tmp_path, broker_url=redis_url, database_url=url)
    assert code == ExitCode.CONFIG, out
    assert pauses == []


def test_the_help_says_how_long_it_waits(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    code, out = invoke_cli(["worker", "--help"], monkeypatch, tmp_path)
    assert code == ExitCode.OK
    text = " ".join(out.split())
    assert "--wait-for-servers SECONDS" in text
    assert "[default: wait for ever; 0: exit at once]" in text
    assert "exits 8 (broker) or 7 (database)" in text
