"""Waiting for a database or broker server that is not up yet.

After a power cut, or a boot where Redis or PostgreSQL come up after the workers, the first
connection is refused or times out. That is worth waiting for; a setting that no wait can
fix (a wrong password, an unknown database or role, a TLS certificate that does not verify,
a host name that does not exist, a Redis database number out of range) is not: it ends the
command at once with its own message and exit code.

``unreachable_reason`` tells the two apart from the exception a connection attempt raised,
and ``wait_until_reachable`` retries an attempt with capped exponential backoff while it
fails for such a reason, one log line per attempt.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import BusyLoadingError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from shared.errors import MammoError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Socket errors of a server that is not listening (yet), or of a network not up (yet).
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.EHOSTDOWN: "host down",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network down",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
}
_NAME_RESOLUTION_FAILING = "name resolution failing for now"

# Why PostgreSQL refused a connection when every slot (max_connections) is taken.
NO_FREE_SLOT = "PostgreSQL has no free connection slot"
# PostgreSQL's answers while it starts, stops, recovers, or is full: it will take this
# connection later. Any other answer from the server (FATAL: password authentication failed,
# database "x" does not exist, no pg_hba.conf entry...) is a setting to fix.
_SERVER_NOT_READY = (
    ("the database system is starting up", "PostgreSQL is starting up"),
    ("the database system is not yet accepting connections", "PostgreSQL is starting up"),
    ("the database system is not accepting connections", "PostgreSQL is not accepting "
                                                         "connections yet"),
    ("the database system is in recovery mode", "PostgreSQL is recovering"),
    ("the database system is shutting down", "PostgreSQL is restarting"),
    ("sorry, too many clients already", NO_FREE_SLOT),
    # "... for non-replication superuser connections" up to PostgreSQL 15, "... for roles
    # with the SUPERUSER attribute" (or "with privileges of ...") from 16.
    ("remaining connection slots are reserved", NO_FREE_SLOT),
)
# libpq's words (it does not pass the errno on) for a server it could not reach.
_CLIENT_TEXTS = (
    ("connection refused", "connection refused"),
    ("timeout expired", "timed out"),
    ("connection timed out", "timed out"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("connection reset by peer", "connection reset"),
    ("server closed the connection unexpectedly", "connection closed"),
    ("temporary failure in name resolution", _NAME_RESOLUTION_FAILING),
)
# A Unix-socket server that is not started has no socket file yet.
_NO_SOCKET = re.compile(r'on socket ".*" failed: No such file or directory', re.IGNORECASE)
_SERVER_SAYS = re.compile(r"FATAL:\s+(.+)")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def unreachable_reason(exc: BaseException) -> str | None:
    """Why a server could not be reached, in a few words ("connection refused", "PostgreSQL
    is starting up"), when ``exc`` or an exception in its chain says the server is not up or
    not reachable for now; None when it says anything else, a setting to fix included."""
    found: str | None = None
    for link in exception_chain(exc):
        if isinstance(link, MammoError):
            continue  # our own wording of it: judge the driver's error it came from
        reason = _reason_of(link)
        if reason == "":
            return None  # the server answered, and refused for good
        found = found or reason
    return found


def _reason_of(exc: BaseException) -> str | None:
    """The reason ``exc`` itself gives: a few words, "" for a server's refusal that no
    wait changes, None when it says neither."""
    if isinstance(exc, BusyLoadingError):
        return "Redis is loading its data"
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return _NAME_RESOLUTION_FAILING if exc.errno == socket.EAI_AGAIN else ""
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return _NETWORK_ERRNOS[exc.errno]
    return _reason_in_text(str(exc))


def _reason_in_text(text: str) -> str | None:
    answers = [line.strip().lower() for line in _SERVER_SAYS.findall(text)]
    if answers:
        reasons = [next((why for said, why in _SERVER_NOT_READY if said in answer), "")
                   for answer in answers]
        return "" if "" in reasons else reasons[0]
    lowered = text.lower()
    if _NO_SOCKET.search(text):
        return "no server socket (not started?)"
    return next((why for said, why in _CLIENT_TEXTS if said in lowered), None)


@dataclass(frozen=True)
class Backoff:
    """Pauses of ``first_s``, doubling each time, at most ``cap_s``."""

    first_s: float = 1.0
    cap_s: float = 30.0

    def pause_s(self, waits: int) -> float:
        return min(self.cap_s, self.first_s * 2 ** min(waits, 32))


def wait_until_reachable(
    attempt: Callable[[], T], *, awaited: Callable[[Exception], str | None], who: str,
    max_wait_s: float | None = None, backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt()``'s result, retried while it fails because a server is unreachable.

    ``awaited(exc)`` names the server a ``TransientError`` (or a raw SQLAlchemy
    ``OperationalError``) is about ("the database at postgresql://..."; never a password),
    or None when there is no server to wait for (a SQLite file): such errors, and any that
    ``unreachable_reason`` does not call unreachable, are raised at once. Each failed attempt
    logs one warning naming the server, the reason and the pause. After ``max_wait_s``
    (None: no limit) the last error is raised. ``who`` ("the worker") starts the log lines.
    """
    started = clock()
    waits = 0
    while True:
        try:
            result = attempt()
        except (TransientError, OperationalError) as exc:
            server, reason = _awaitable(exc, awaited)
            if server is None or reason is None:
                raise
            waited = clock() - started
            left = None if max_wait_s is None else max_wait_s - waited
            if left is not None and left <= 0:
                if waits:
                    log.error("%s gives up: %s is still unreachable (%s) after %.0f s of "
                              "waiting", who, server, reason, waited)
                raise
            pause = backoff.pause_s(waits) if left is None else min(backoff.pause_s(waits), left)
            log.warning("waiting for %s: %s; %s starts once it is reachable; retrying in "
                        "%g s", server, reason, who, round(pause, 1))
            sleep(pause)
            waits += 1
            continue
        if waits:
            log.warning("%s starts: its servers answered after %.0f s of waiting", who,
                        clock() - started)
        return result


def _awaitable(exc: Exception, awaited: Callable[[Exception], str | None],
               ) -> tuple[str | None, str | None]:
    """The server ``exc`` is about and why it is unreachable; a None where there is no
    server to wait for, or no reason to."""
    server = awaited(exc)
    return server, (unreachable_reason(exc) if server else None)
