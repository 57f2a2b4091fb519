"""Workers' failing saves, kept in the broker where `mammo status` reads them.

A worker whose saves the database refuses (its disk full, a read-only database) hands the
chunk's images back, their attempts refunded, and retries: nothing is lost, but nothing
progresses either, and the reason ("could not extend file ...: No space left on device")
was only in the worker's log, while `mammo status` reads the database, which still answers
reads, and said all was well. Each worker process therefore records its latest failure in
the broker, the one place a status can read while the database refuses writes: a key per
process (``KEY_PREFIX`` + its name), refreshed at each failure, deleted at its next
successful save, and expiring when no failure renewed it for ``ttl_s`` (a worker killed
meanwhile). Times are the broker's own clock (Redis TIME), whatever the hosts' clocks say.

The record holds the worker's name, when the failures began and when the last one was, how
many there were, and the database's reason: its first line and hint only, printable, at
most ``REASON_LIMIT`` characters (never a DETAIL line, which may quote a row's values).
Without a broker (the embedded queue of `mammo run`, which stops and says why itself)
nothing is recorded. Best effort both ways: these functions never raise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)

KEY_PREFIX = "mammo:save-failures:"
REASON_LIMIT = 200
# A broker that is away must not hold a worker's retry, nor a status, for minutes (kombu's
# Redis transport sets no socket timeouts: a dropped packet waited for TCP's own).
_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


@dataclass(frozen=True)
class SaveFailure:
    worker: str
    since: float  # the first failure since this worker's last successful save (broker clock)
    last: float  # the latest one
    failures: int
    reason: str


def database_reason(exc: BaseException) -> str:
    """The database's reason for a refused write, fit to show anyone: its first line, and
    its HINT line if it gave one, each character that is not printable written "?", at
    most ``REASON_LIMIT`` characters."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    hint = next((line for line in lines[1:] if line.upper().startswith("HINT:")), None)
    return _shown(lines[0] + (f" ({hint})" if hint else ""))


def record_failure(app: Celery, worker: str, reason: str, *, ttl_s: int) -> None:
    """Record that ``worker`` failed to save just now, for ``reason`` (``database_reason``)."""
    try:
        with _redis(app) as client:
            if client is None:
                return
            now = _broker_now(client)
            key = KEY_PREFIX + worker
            earlier = _parsed(client.get(key))
            record = {"worker": worker, "since": earlier.since if earlier else now,
                      "last": now, "failures": (earlier.failures if earlier else 0) + 1,
                      "reason": _shown(reason)}
            client.set(key, json.dumps(record), ex=max(1, int(ttl_s)))
    except Exception as exc:  # the broker away: the worker's log still says why
        log.debug("could not record a failed save in the broker: %s", type(exc).__name__)


def clear_failure(app: Celery, worker: str) -> None:
    """``worker`` saved again: its failures are over."""
    try:
        with _redis(app) as client:
            if client is not None:
                client.delete(KEY_PREFIX + worker)
    except Exception as exc:  # it expires by itself
        log.debug("could not clear a failed save in the broker: %s", type(exc).__name__)


def save_failures(app: Celery) -> tuple[list[SaveFailure], float] | None:
    """The failures the workers recorded, and the broker's time now; None when the broker
    cannot tell (embedded, not Redis, unreachable)."""
    try:
        with _redis(app) as client:
            if client is None:
                return None
            keys = sorted(client.scan_iter(match=KEY_PREFIX + "*", count=500))
            values = client.mget(keys) if keys else []
            now = _broker_now(client)
    except Exception as exc:
        log.debug("could not read failed saves from the broker: %s", type(exc).__name__)
        return None
    found = [record for value in values if (record := _parsed(value)) is not None]
    return sorted(found, key=lambda f: f.worker), now


def failing_summary(failures: list[SaveFailure], now: float) -> str | None:
    """"saves failing on N worker(s) for M min (...): <the latest reason>", or None."""
    if not failures:
        return None
    latest = max(failures, key=lambda f: f.last)
    return (f"saves failing on {len(failures)} worker(s) for "
            f"{_duration(now - min(f.since for f in failures))} (the latest "
            f"{_duration(now - latest.last)} ago, on {latest.worker}): {latest.reason}")


@contextmanager
def _redis(app: Celery) -> Iterator[Any]:
    """The broker's Redis client, or None when the broker is not Redis."""
    if str(app.conf.broker_url or "memory://").startswith("memory://"):  # embedded
        yield None
        return
    with app.connection_for_write(transport_options=_TIMEOUTS) as conn, \
            conn.channel() as channel:
        yield getattr(channel, "client", None)


def _broker_now(client: Any) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def _parsed(value: object) -> SaveFailure | None:
    if not isinstance(value, bytes | str):
        return None
    try:
        data = json.loads(value)
        return SaveFailure(worker=_shown(str(data["worker"])), since=float(data["since"]),
                           last=float(data["last"]), failures=int(data["failures"]),
                           reason=_shown(str(data["reason"])))
    except (ValueError, TypeError, KeyError):
        return None


def _shown(text: str) -> str:
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 6].rstrip() + " [...]"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    return f"{round(seconds / 60)} min"
