"""A reachable server that refuses the work, classified by SQLSTATE in one place
(``shared.db.refusals``): the worker's claims and saves wait and retry through it, and the
CLI's one-line errors say what to do through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy.exc import IntegrityError, InternalError, OperationalError, ProgrammingError

from shared.db.engine import failed_command_as_error
from shared.db.refusals import unavailable_reason, write_refusal
from shared.errors import DatabaseUnavailableError
from worker import pipeline
from worker.runtime import WorkerRuntime


class _ServerError(Exception):
    """A driver's error as psycopg raises it: its SQLSTATE an attribute."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


READ_ONLY = InternalError("UPDATE images SET ...", None, _ServerError(
    "cannot execute UPDATE in a read-only transaction", "25006"))
NO_PRIVILEGE = ProgrammingError("UPDATE images SET ...", None, _ServerError(
    "permission denied for table images", "42501"))
AWAY = OperationalError("SELECT 1", None, _ServerError("server closed the connection", "08006"))
TIMED_OUT = OperationalError("SELECT ...", None, _ServerError(
    "canceling statement due to statement timeout", "57014"))
A_BUG = IntegrityError("INSERT ...", None, _ServerError("duplicate key value", "23505"))


@pytest.mark.parametrize("exc, reason", [
    (READ_ONLY, "the database refuses writes (read-only: a standby, or "
                "default_transaction_read_only on): cannot execute UPDATE in a read-only "
                "transaction"),
    (NO_PRIVILEGE, "this database user may not write (it lacks a privilege): permission "
                   "denied for table images"),
    (AWAY, "server closed the connection"),
    (A_BUG, None),
])
def test_refused_writes_and_outages_are_worth_a_retry_and_a_bug_is_not(
        exc: Any, reason: str | None) -> None:
    assert unavailable_reason(exc) == reason


def test_a_refusal_is_found_on_the_driver_error_or_its_wrapper() -> None:
    assert write_refusal(READ_ONLY) is write_refusal(READ_ONLY.orig) is not None
    assert write_refusal(AWAY) is None and write_refusal(TIMED_OUT) is None


@pytest.mark.parametrize("exc, says", [
    (READ_ONLY, "set MAMMO_DATABASE_URL to the writable primary"),
    (NO_PRIVILEGE, "have the database's owner grant it"),
    (TIMED_OUT, "cancelled the statement after the statement_timeout set for this role or "
                "database"),
])
def test_a_command_refused_by_the_server_says_what_to_do(exc: Any, says: str) -> None:
    error = failed_command_as_error("postgresql+psycopg://mammo:secret@db/mammo", exc)
    assert isinstance(error, DatabaseUnavailableError)
    assert says in str(error) and "secret" not in str(error)
    assert "that the server is running" not in str(error)


def _runtime_raising(exc: Exception) -> WorkerRuntime:
    @contextmanager
    def sessions() -> Iterator[None]:
        raise exc
        yield

    return cast(WorkerRuntime, SimpleNamespace(
        sessions=sessions, settings=SimpleNamespace(claim_lease_s=60)))


@pytest.mark.parametrize("exc", [READ_ONLY, NO_PRIVILEGE, AWAY])
def test_a_claim_the_database_refuses_is_retried_not_dropped(exc: Any) -> None:
    # Before, only an OperationalError was: a read-only database's InternalError failed the
    # chunk as unexpected, and its message was acknowledged and gone.
    with pytest.raises(DatabaseUnavailableError) as raised:
        pipeline._claim(_runtime_raising(exc), [1, 2], "token")
    assert str(raised.value) == \
        f"database unavailable while claiming: {unavailable_reason(exc)}"


def test_a_claim_that_fails_for_another_reason_is_not_disguised() -> None:
    with pytest.raises(IntegrityError):
        pipeline._claim(_runtime_raising(A_BUG), [1], "token")
