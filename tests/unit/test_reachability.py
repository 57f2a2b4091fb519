"""Telling a server that is not up (yet) from a setting no wait can fix, and waiting for it.

The errors are the drivers' own: refused connections are made for real (nothing listens on
the port), and a server's answers are the texts libpq and redis-py give for them (taken
from a real PostgreSQL 16 and Redis 7: FATAL: database "x" does not exist, ...).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

import psycopg
import pytest
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from shared.config import Settings
from shared.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    MigrationError,
)
from shared.queue import check_broker, create_celery_app
from shared.reachability import Backoff, unreachable_reason, wait_until_reachable
from tests.helpers.services import free_port

PG_FAILED = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


def _raised_from(cause: BaseException, wrapper: Exception) -> Exception:
    """``wrapper`` raised from ``cause``, as the drivers and our own code chain them."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise wrapper from exc
    except Exception as raised:
        return raised


def _database_error(text: str) -> Exception:
    """What ``unavailable_as_error`` raises for psycopg's ``text``, chain included."""
    orig = psycopg.OperationalError(text)
    wrapped = OperationalError("SELECT 1", None, orig)
    return _raised_from(_raised_from(orig, wrapped),
                        DatabaseUnavailableError(f"Cannot reach the database at ...: {text}"))


def _broker_error(cause: BaseException) -> Exception:
    """What ``check_broker`` raises for redis-py's ``cause``, chain included."""
    redis_error = cause if not isinstance(cause, OSError) else _raised_from(
        cause, RedisConnectionError(f"Error {cause.errno} connecting. {cause.strerror}."))
    kombu = _raised_from(redis_error, KombuOperationalError(str(redis_error)))
    return _raised_from(kombu, BrokerUnavailableError(f"Cannot reach the broker: {kombu}"))


def test_a_real_refused_database_connection_is_unreachable() -> None:
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with pytest.raises(OperationalError) as caught:
        engine.connect()
    assert unreachable_reason(caught.value) == "connection refused"


def test_a_real_refused_broker_connection_is_unreachable() -> None:
    app: Celery = create_celery_app(Settings(  # type: ignore[call-arg]
        broker_url=f"redis://127.0.0.1:{free_port()}/0", _env_file=None))
    with pytest.raises(BrokerUnavailableError) as caught:
        check_broker(app, timeout_s=1.0)
    assert unreachable_reason(caught.value) == "connection refused"


@pytest.mark.parametrize(("text", "reason"), [
    (PG_FAILED + "Connection refused\n\tIs the server running on that host and accepting "
                 "TCP/IP connections?", "connection refused"),
    ("connection timeout expired", "timed out"),
    (PG_FAILED + "No route to host", "no route to host"),
    ("failed to resolve host 'db': [Errno -3] Temporary failure in name resolution",
     "name resolution failing for now"),
    ('connection is bad: connection to server on socket "/run/postgresql/.s.PGSQL.5432" '
     "failed: No such file or directory\n\tIs the server running locally?",
     "no server socket (not started?)"),
    (PG_FAILED + "FATAL:  the database system is starting up", "PostgreSQL is starting up"),
    (PG_FAILED + "FATAL:  the database system is not yet accepting connections",
     "PostgreSQL is starting up"),
    (PG_FAILED + "FATAL:  the database system is shutting down", "PostgreSQL is restarting"),
    (PG_FAILED + "FATAL:  sorry, too many clients already",
     "PostgreSQL has no free connection slot"),
])
def test_a_database_not_up_yet_is_unreachable(text: str, reason: str) -> None:
    assert unreachable_reason(_database_error(text)) == reason


@pytest.mark.parametrize("text", [
    PG_FAILED + 'FATAL:  database "mammo" does not exist',
    PG_FAILED + 'FATAL:  role "mammo" does not exist',
    PG_FAILED + 'FATAL:  password authentication failed for user "mammo"',
    PG_FAILED + 'FATAL:  no pg_hba.conf entry for host "10.0.0.5", user "mammo"',
    PG_FAILED + "server does not support SSL, but SSL was required",
    "failed to resolve host 'dbb': [Errno -2] Name or service not known",
    # Two hosts: one down, one that refused this login. Waiting would not fix the second.
    'connection to server at "a" (10.0.0.1), port 5432 failed: Connection refused\n'
    'connection to server at "b" (10.0.0.2), port 5432 failed: FATAL:  password '
    'authentication failed for user "mammo"',
    # SQLite: a file's folder, disk or lock; never a server.
    "unable to open database file",
    "database is locked",
    "disk I/O error",
])
def test_a_database_setting_to_fix_is_not_unreachable(text: str) -> None:
    assert unreachable_reason(_database_error(text)) is None


@pytest.mark.parametrize(("cause", "reason"), [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (OSError(113, "No route to host"), "no route to host"),
    (TimeoutError("timed out"), "timed out"),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
     "name resolution failing for now"),
    (BusyLoadingError("Redis is loading the dataset in memory"), "Redis is loading its data"),
])
def test_a_broker_not_up_yet_is_unreachable(cause: BaseException, reason: str) -> None:
    assert unreachable_reason(_broker_error(cause)) == reason


@pytest.mark.parametrize("cause", [
    AuthenticationError("invalid username-password pair or user is disabled."),
    ResponseError("DB index is out of range"),
    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                                    "failed: unable to get local issuer certificate"),
    RedisConnectionError("Connection closed by server."),  # not Redis on that port
])
def test_a_broker_setting_to_fix_is_not_unreachable(cause: BaseException) -> None:
    assert unreachable_reason(_broker_error(cause)) is None


def test_our_own_wording_is_not_judged() -> None:
    # The messages we write (remedies, URLs) may hold any words: only drivers' errors count.
    assert unreachable_reason(DatabaseUnavailableError("timed out; connection refused")) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


REFUSED = _broker_error(ConnectionRefusedError(111, "Connection refused"))


def _awaited(exc: Exception) -> str | None:
    return "the message broker at redis://h:6379/0"


def _failing(errors: list[Exception], result: str = "started") -> Callable[[], str]:
    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return result
    return attempt


def test_waits_with_capped_doubling_pauses_and_says_so_each_time(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="shared.reachability")
    got = wait_until_reachable(_failing([REFUSED] * 8), awaited=_awaited, who="the worker",
                               sleep=clock.sleep, clock=clock)
    assert got == "started"
    assert clock.pauses == [1, 2, 4, 8, 16, 30, 30, 30]
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(waits) == 8
    assert waits[3] == ("waiting for the message broker at redis://h:6379/0: connection "
                        "refused; the worker starts once it is reachable; retrying in 8 s")
    assert caplog.records[-1].getMessage() == (
        "the worker starts: its servers answered after 121 s of waiting")


def test_a_setting_to_fix_is_raised_at_once_without_waiting() -> None:
    clock = _Clock()
    refused_login = _broker_error(AuthenticationError("invalid username-password pair"))
    with pytest.raises(BrokerUnavailableError) as caught:
        wait_until_reachable(_failing([REFUSED, refused_login]), awaited=_awaited,
                             who="the worker", sleep=clock.sleep, clock=clock)
    assert caught.value is refused_login and clock.pauses == [1]


def test_an_error_that_is_not_a_server_being_away_is_not_caught() -> None:
    clock = _Clock()
    with pytest.raises(MigrationError):
        wait_until_reachable(_failing([MigrationError("failed")]), awaited=_awaited,
                             who="the worker", sleep=clock.sleep, clock=clock)
    assert clock.pauses == []


def test_no_server_to_wait_for_is_raised_at_once() -> None:
    clock = _Clock()
    with pytest.raises(BrokerUnavailableError):
        wait_until_reachable(_failing([REFUSED]), awaited=lambda _exc: None, who="the worker",
                             sleep=clock.sleep, clock=clock)
    assert clock.pauses == []


def test_gives_up_after_the_longest_wait_with_the_last_error(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    with pytest.raises(BrokerUnavailableError):
        wait_until_reachable(_failing([REFUSED] * 10), awaited=_awaited, who="the worker",
                             max_wait_s=10, sleep=clock.sleep, clock=clock)
    assert clock.pauses == [1, 2, 4, 3]  # the last pause ends at the limit
    assert caplog.records[-1].levelno == logging.ERROR
    assert "still unreachable (connection refused) after 10 s" in caplog.records[-1].getMessage()


def test_no_wait_at_all_raises_the_first_error_as_before() -> None:
    clock = _Clock()
    with pytest.raises(BrokerUnavailableError):
        wait_until_reachable(_failing([REFUSED]), awaited=_awaited, who="the worker",
                             max_wait_s=0, sleep=clock.sleep, clock=clock)
    assert clock.pauses == []


def test_backoff_pauses() -> None:
    assert [Backoff(first_s=0.5, cap_s=3).pause_s(n) for n in range(5)] == [0.5, 1, 2, 3, 3]
    assert Backoff().pause_s(10_000) == 30
