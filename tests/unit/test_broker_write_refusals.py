"""A Redis that answers and refuses writes (maxmemory reached, a read-only replica).

It was told as "Cannot reach the message broker ... Check MAMMO_BROKER_URL and that Redis is
running", and `mammo status --health` called it reachable; a worker exited 1 at the first
refused write. What it says now, and the worker step that keeps the worker up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, OutOfMemoryError, ReadOnlyError

from shared.queue import (
    WRITE_REFUSALS,
    broker_unreachable_message,
    write_refusal_in,
    write_refusal_of,
)
from worker import write_refusals
from worker.write_refusals import WriteRefusalsAreConnectionLoss, install_write_refusal_retry

OOM = "command not allowed when used memory > 'maxmemory'."
FULL = {"used_memory": 2_000_000, "maxmemory": 1_000_000, "mem_not_counted_for_evict": 0}


def _wrapped(exc: Exception) -> OperationalError:
    """What kombu raises: its own error, from the driver's."""
    try:
        raise OperationalError(str(exc)) from exc
    except OperationalError as wrapped:
        return wrapped


@pytest.fixture
def app() -> Celery:
    return Celery("t", broker="redis://:secret@broker:6379/0", set_as_current=False)


def test_a_full_redis_is_told_as_a_refusal_with_what_to_do_not_as_unreachable(
        app: Celery) -> None:
    said = broker_unreachable_message(app, _wrapped(OutOfMemoryError(OOM)))
    assert said.startswith("The message broker at redis://:***@broker:6379/0 refuses writes: "
                           "Redis has reached its maxmemory (command not allowed")
    assert "raise its maxmemory" in said and "Cannot reach" not in said
    assert "secret" not in said
    # The watcher quotes the first 200 characters: the fault and its fix fit in them.
    assert "Free memory in Redis" in said[:200]


def test_a_replica_is_told_as_read_only_with_the_primary_to_point_at(app: Celery) -> None:
    said = broker_unreachable_message(
        app, _wrapped(ReadOnlyError("You can't write against a read only replica.")))
    assert "is a read-only replica" in said
    assert "point MAMMO_BROKER_URL at the primary" in said and "Cannot reach" not in said


def test_any_other_failure_keeps_the_unreachable_wording(app: Celery) -> None:
    for exc in (RedisConnectionError("Connection refused"), NoPermissionError("NOPERM")):
        said = broker_unreachable_message(app, _wrapped(exc))
        assert said.startswith("Cannot reach the message broker")
        assert write_refusal_in(_wrapped(exc)) is None


@pytest.mark.parametrize(("memory", "role", "expected"), [
    ({**FULL, "maxmemory_policy": "noeviction"}, "master", "maxmemory reached (noeviction)"),
    ({**FULL, "maxmemory_policy": "volatile-lru"}, "master", "maxmemory reached (volatile-lru)"),
    # It evicts queue keys to make room (and loses messages, a README matter): writes pass.
    ({**FULL, "maxmemory_policy": "allkeys-lru"}, "master", None),
    ({**FULL, "maxmemory": 0, "maxmemory_policy": "noeviction"}, "master", None),  # no limit
    # Replication buffers do not count towards maxmemory.
    ({**FULL, "mem_not_counted_for_evict": 1_500_000, "maxmemory_policy": "noeviction"},
     "master", None),
    ({"used_memory": 10, "maxmemory": 0, "maxmemory_policy": "noeviction"}, "slave",
     "read-only replica"),
])
def test_info_tells_when_redis_refuses_writes(memory: dict[str, Any], role: str,
                                              expected: str | None) -> None:
    assert write_refusal_of(memory, {"role": role}) == expected


def _consumer(app: Celery) -> Any:
    connection_errors = (RedisConnectionError, OSError)
    return SimpleNamespace(app=app, steps=["connection", "tasks"],
                           connection_errors=connection_errors,
                           channel_errors=(*connection_errors, NoPermissionError))


def test_the_consumer_retries_write_refusals_alone_and_its_acks_still_raise_them(
        app: Celery) -> None:
    install_write_refusal_retry(app)
    consumer = _consumer(app)
    step = WriteRefusalsAreConnectionLoss(consumer)
    assert step.include(consumer)
    assert app.conf.broker_channel_error_retry  # Celery retries the consumer's channel errors
    assert consumer.channel_errors == WRITE_REFUSALS  # ...these alone: an ACL still stops it
    assert not issubclass(NoPermissionError, consumer.channel_errors)
    # An ack or reject fails quietly on a connection error and left the worker stalled.
    assert not any(issubclass(e, consumer.connection_errors) for e in WRITE_REFUSALS)
    assert consumer.steps[0] is step  # its pause comes before the connect


def test_reconnects_to_a_broker_that_still_refuses_writes_are_paced(
        app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    full = "maxmemory reached (noeviction)"
    answers = iter([full, full, full, full, full, full, full, None, None])
    monkeypatch.setattr(write_refusals, "broker_write_refusal", lambda _app: next(answers))
    now = [0.0]
    monkeypatch.setattr(write_refusals.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(write_refusals.time, "sleep",
                        lambda s: now.__setitem__(0, now[0] + s))
    consumer = _consumer(app)
    step = WriteRefusalsAreConnectionLoss(consumer)
    step.start(consumer)  # refused: waits 1 s (one check), then lets the connect try
    assert now[0] == 1.0
    step.start(consumer)  # refused again: 2 s, checked each second
    assert now[0] == 3.0
    step.start(consumer)  # refused, up to 4 s: cut short once writes pass, after 2 s
    assert now[0] == 5.0
    step.start(consumer)  # writes pass: no wait, and the backoff starts again
    assert now[0] == 5.0
