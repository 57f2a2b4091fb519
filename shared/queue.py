"""Celery wiring shared by the producer (which sends) and the worker (which consumes).

Messages carry image ids only (JSON, never pickle, never pixels or patient data). The same
app configuration serves Redis and the embedded in-memory transport, so ``mammo run`` and a
fleet of ``mammo worker`` processes execute the same task code.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.exceptions import CPendingDeprecationWarning
from kombu import Connection, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from shared.config import Settings
from shared.enums import Priority
from shared.errors import BrokerUnavailableError, ConfigurationError
from shared.reachability import exception_chain
from shared.urls import redact_url

T = TypeVar("T")

TASK_PROCESS_CHUNK = "mammo.process_chunk"
QUEUE_NAME = "mammo"


# What a task-failed or task-retried event says of the exception instead of its text.
EXCEPTION_LEFT_OUT = "message and traceback left out of events: see the worker's log"
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*")
# Seconds a quick question to the broker (is it up, how deep is the queue) waits for an
# answer: a status or a submit's first check says "unreachable" instead of hanging.
_PROBE_TIMEOUT_S = 3.0


class PrivateEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, which sends a failed or retried task's exception as its
    type alone, with no message and no traceback.

    Events are published to the broker for monitors (Flower, ``celery events``) to read: an
    exception's text may quote what a chunk was working on (a source path built from a
    patient's name, a value a database refused), which belongs in the worker's log, kept on
    its host, and not in a broadcast any broker client can subscribe to.
    """

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        if "exception" in fields:
            found = _EXCEPTION_NAME.match(str(fields["exception"]))
            fields["exception"] = (f"{found.group(0) if found else 'Exception'}: "
                                   f"{EXCEPTION_LEFT_OUT}")
        if "traceback" in fields:
            fields["traceback"] = EXCEPTION_LEFT_OUT
        return super().send(type, *args, **fields)


class PrivateEvents(Events):
    """``app.events`` with ``PrivateEventDispatcher``: what the worker sends its task events
    with."""

    dispatcher_cls = PrivateEventDispatcher


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("mammo", broker=settings.effective_broker_url, set_as_current=False,
                 events=PrivateEvents)
    hard = settings.task_time_limit_s
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=hard,
        task_soft_time_limit=max(hard - 30, int(hard * 0.9)),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
            # redis-py waits for a reply for ever by default: a Redis that stops answering
            # without closing the socket (paused, failed over behind a virtual IP, an idle
            # flow dropped by a firewall) would hold every send and sweep with it.
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_connect_timeout": settings.broker_socket_timeout_s,
            "socket_keepalive": True,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_default_queue=QUEUE_NAME,
        task_queues=(Queue(QUEUE_NAME, routing_key=QUEUE_NAME),),
        task_create_missing_queues=False,
        # A child loads TensorFlow and the model before it reports up; the 4 s default
        # kills every recycled child in a loop (see PITFALLS.md), and so did a fixed 120 s
        # on a loaded host whose loads took 161-168 s.
        worker_proc_alive_timeout=settings.worker_start_timeout_s,
        # Task events feed Flower (docker-compose's monitoring profile, which also turns them
        # on at run time): kept, with a failure's exception as its type alone (above).
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        # Kept False on purpose: a chunk running when the broker drops still writes its
        # results to the database (which did not drop), and the redelivered message finds
        # its images done (claims and upserts make it a no-op). True would kill the child
        # mid-chunk: its work lost, its claims held until the lease ends, and the model
        # loaded again. Celery warns about this choice at every drop; see below.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    _quiet_connection_loss_notice()
    if settings.worker_max_memory_mb:
        app.conf.worker_max_memory_per_child = settings.worker_max_memory_mb * 1024
    return app


_CONNECTION_LOSS_NOTICE = re.compile(r"\s*In Celery 5\.1 we introduced an optional breaking change")


class _WithoutConnectionLossNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _CONNECTION_LOSS_NOTICE.search(record.getMessage())


def _quiet_connection_loss_notice() -> None:
    """Celery warns, in 6 lines, at every broker drop that the setting above will default
    to True in Celery 6, even when it is set explicitly: every Redis restart filled the
    worker log with it. Only that notice is silenced; the drop itself is still logged.

    A warnings filter alone is not enough in a worker: Celery's logging setup puts an
    "always" filter for its pending-deprecation warnings in front of it and routes warnings
    to the ``py.warnings`` logger, so the notice is also dropped there."""
    warnings.filterwarnings("ignore", message=_CONNECTION_LOSS_NOTICE.pattern,
                            category=CPendingDeprecationWarning)
    captured = logging.getLogger("py.warnings")
    if not any(isinstance(f, _WithoutConnectionLossNotice) for f in captured.filters):
        captured.addFilter(_WithoutConnectionLossNotice())


def chunked(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start:start + size])


def enqueue_chunks(
    app: Celery, image_ids: Iterable[int], *, chunk_size: int, priority: Priority,
) -> int:
    """Send one task per chunk of ids; return the number of messages sent."""
    sent = 0
    broker_connection(app).release()  # a URL kombu cannot parse is a setting to fix, not a retry
    try:
        with app.producer_or_acquire() as producer:
            for chunk in chunked(list(image_ids), chunk_size):
                app.send_task(
                    TASK_PROCESS_CHUNK, args=[chunk], queue=QUEUE_NAME,
                    priority=priority.broker_priority, producer=producer,
                    retry=True, retry_policy={"max_retries": 3, "interval_start": 0.5,
                                              "interval_step": 1.0, "interval_max": 3.0},
                )
                sent += 1
    except (OSError, KombuOperationalError) as exc:
        raise BrokerUnavailableError(broker_unreachable_message(app, exc)) from exc
    return sent


def enqueue_by_priority(
    app: Celery, groups: Mapping[Priority, Sequence[int]], *, chunk_size: int,
) -> int:
    """Send each priority's ids at that priority, most urgent first; return the messages
    sent. A chunk never mixes priorities: an urgent image is never held to routine pace by
    the chunk it shares, nor a routine one served early."""
    sent = 0
    for priority in sorted(groups, key=lambda p: p.broker_priority):
        if groups[priority]:
            sent += enqueue_chunks(app, groups[priority], chunk_size=chunk_size,
                                   priority=priority)
    return sent


def broker_connection(app: Celery, timeout_s: float | None = None) -> Connection:
    """A (not yet connected) connection to the broker, or a ``ConfigurationError``; with
    ``timeout_s``, one whose every command (the connection's own PING included) fails after
    that long without a reply, for a quick question that must not wait on a dead broker.

    kombu parses the URL here and turns its query into connection arguments, so a query
    key it also takes from the URL itself (``?password=`` is the common one) fails with a
    KeyError, which no retry and no running broker can fix.
    """
    quick = None if timeout_s is None else {"socket_timeout": timeout_s,
                                            "socket_connect_timeout": timeout_s}
    try:
        return app.connection_for_write(transport_options=quick)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"MAMMO_BROKER_URL {redact_url(app.conf.broker_url)} cannot be used ("
            f"{type(exc).__name__}: {exc}). A password goes in the URL itself "
            "(redis://:PASSWORD@host:6379/0), not in its query string.") from None


# Redis answers, and refuses every write: it has reached its maxmemory under a policy that
# cannot evict what it would need to (OOM), or it is a replica (READONLY). Kombu files both
# under channel errors with any other ResponseError, and says only "Cannot reach"; neither
# is fixed by checking the URL, and both pass by themselves (memory freed, a failover done).
WRITE_REFUSALS: tuple[type[Exception], ...] = (OutOfMemoryError, ReadOnlyError)
# maxmemory-policy values under which a full Redis refuses writes to the queue's keys, none
# of which expires: ``noeviction``, and ``volatile-*``, which evict only keys with a TTL.
_CANNOT_EVICT_QUEUES = re.compile(r"noeviction|volatile-")


def write_refusal_in(exc: BaseException) -> Exception | None:
    """Redis's refusal of a write (``WRITE_REFUSALS``) in ``exc`` or its chain (kombu raises
    its own OperationalError from it), or None."""
    return next((link for link in exception_chain(exc) if isinstance(link, WRITE_REFUSALS)),
                None)


def broker_unreachable_message(app: Celery, exc: BaseException) -> str:
    url = redact_url(app.conf.broker_url)
    refusal = write_refusal_in(exc)
    reason = str(refusal or exc).strip().rstrip(".") or type(exc).__name__
    if isinstance(refusal, OutOfMemoryError):
        return (f"The message broker at {url} refuses writes: Redis has reached its "
                f"maxmemory ({reason}). Free memory in Redis or raise its maxmemory "
                "(redis-cli CONFIG SET maxmemory ...); images already registered stay queued "
                "in the database and are sent once it accepts writes.")
    if isinstance(refusal, ReadOnlyError):
        return (f"The message broker at {url} is a read-only replica ({reason}): point "
                "MAMMO_BROKER_URL at the primary (after a failover, the new one).")
    return (f"Cannot reach the message broker at {url}: {reason}. "
            "Check MAMMO_BROKER_URL and that Redis is running, or unset MAMMO_BROKER_URL to "
            "use `mammo run` (no servers).")


def write_refusal_of(memory: Mapping[str, Any], replication: Mapping[str, Any]) -> str | None:
    """Why a Redis whose ``INFO memory`` and ``INFO replication`` are these refuses writes,
    in a few words, or None when it takes them.

    Redis refuses a write when its used memory, less what it does not count for eviction
    (replication and AOF buffers), exceeds maxmemory and the policy finds nothing to evict.
    """
    if replication.get("role") == "slave":
        return "read-only replica"
    limit = int(memory.get("maxmemory") or 0)
    used = int(memory.get("used_memory") or 0) - int(memory.get("mem_not_counted_for_evict") or 0)
    policy = str(memory.get("maxmemory_policy", ""))
    if limit > 0 and used > limit and _CANNOT_EVICT_QUEUES.match(policy):
        return f"maxmemory reached ({policy})"
    return None


def broker_write_refusal(app: Celery) -> str | None:
    """Why the Redis broker refuses writes now ("maxmemory reached (noeviction)", "read-only
    replica"), from two read-only INFO questions answered within the probe's deadline; None
    when it takes them, or when that cannot be told (not Redis, or unreachable)."""
    return _ask_redis(app, lambda client: write_refusal_of(client.info("memory"),
                                                           client.info("replication")))


# The maxmemory-policy values under which a Redis at its maxmemory evicts any key to make
# room: the queue's lists, and kombu's unacked hash and index with them. None of those has
# a TTL (kombu sets one only on a queue declared with x-expires, which ours is not), so a
# ``volatile-*`` policy never picks them: it refuses the write instead (above).
_EVICTS_ANY_KEY = "allkeys-"


@dataclass(frozen=True)
class BrokerEviction:
    """What a Redis broker's INFO says of evicting keys."""

    policy: str  # its maxmemory-policy
    evicted_keys: int  # keys evicted since it started (or CONFIG RESETSTAT), any database

    @property
    def evicts_queues(self) -> bool:
        """Whether Redis, once at its maxmemory, may evict the queue's keys: its messages
        vanish, with no error to anyone, and an image waits for the sweeper's full wait."""
        return self.policy.startswith(_EVICTS_ANY_KEY)

    def warning(self) -> str | None:
        """What to tell an operator: an evicting policy, or keys evicted before under
        another one (the counter outlives a CONFIG SET); None when neither. Under a
        ``volatile-*`` policy, evicted keys are keys with a TTL, never the queue's."""
        evicted = (f"; it has evicted {self.evicted_keys} key(s) since it started (INFO "
                   "stats evicted_keys): `mammo recover --older-than 0` re-sends the "
                   "messages of images still queued") if self.evicted_keys else ""
        if self.evicts_queues:
            return (f"Redis evicts keys (maxmemory-policy {self.policy}): queued messages "
                    f"can vanish; set maxmemory-policy noeviction{evicted}")
        if self.evicted_keys and not self.policy.startswith("volatile-"):
            return (f"Redis has evicted {self.evicted_keys} key(s) since it started (INFO "
                    f"stats evicted_keys), under an earlier maxmemory-policy (now "
                    f"{self.policy}): queued messages may have vanished; `mammo recover "
                    "--older-than 0` re-sends the messages of images still queued (CONFIG "
                    "RESETSTAT zeroes the count)")
        return None


def eviction_of(memory: Mapping[str, Any], stats: Mapping[str, Any]) -> BrokerEviction:
    """The eviction state of a Redis whose ``INFO memory`` and ``INFO stats`` are these."""
    return BrokerEviction(str(memory.get("maxmemory_policy", "")),
                          int(stats.get("evicted_keys") or 0))


def broker_eviction(app: Celery) -> BrokerEviction | None:
    """The Redis broker's maxmemory-policy and evicted keys, from two read-only INFO
    questions answered within the probe's deadline; None when that cannot be told (not
    Redis, or unreachable)."""
    return _ask_redis(app, lambda client: eviction_of(client.info("memory"),
                                                      client.info("stats")))


def check_broker(app: Celery, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    connection = broker_connection(app, timeout_s)
    try:
        with connection as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:
        raise BrokerUnavailableError(broker_unreachable_message(app, exc)) from exc


def broker_uptime_s(app: Celery) -> float | None:
    """Seconds since the Redis broker last started, or None when the transport cannot tell
    (not Redis, or unreachable). Messages sent before then are gone unless Redis kept them
    in an append-only file."""
    return _ask_redis(app, lambda client: float(client.info("server")["uptime_in_seconds"]))


def _ask_redis(app: Celery, question: Callable[[Any], T]) -> T | None:
    """``question`` put to the Redis broker's client within the probe's deadline; None when
    the transport is not Redis or the broker cannot answer (the callers fall back: a sweep to
    its plain waiting time, a status to its own reachability check)."""
    try:
        with broker_connection(app, _PROBE_TIMEOUT_S) as conn, conn.channel() as channel:
            client = getattr(channel, "client", None)
            return None if client is None else question(client)
    except Exception:
        return None


def live_workers(app: Celery, timeout_s: float = 1.0) -> list[str] | None:
    """The workers that answer a ping within ``timeout_s`` (their node names), or None
    when the broker cannot be asked. Only for a broker already known to be reachable: a
    status must not wait on connection retries."""
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    except Exception:  # status still reports what the database knows
        return None
    return sorted(name for reply in replies for name in reply)


def queue_depth(app: Celery) -> int | None:
    """Messages waiting in the broker, or None when the transport cannot tell."""
    depths = queue_depths(app)
    return None if depths is None else sum(depths.values())


def queue_depths(app: Celery) -> dict[int, int] | None:
    """Messages waiting in the broker at each priority step (``Priority.broker_priority``:
    0 is urgent, 5 routine; a worker takes the lowest step holding any first), or None when
    the broker cannot be asked.

    The sweeper judges a queued image by the messages at its own step or a more urgent one
    (``recovery.waiting_ahead``): a routine backlog says nothing of an urgent message.
    A transport without a list per step (the embedded in-memory queue) has its whole depth
    put at the most urgent step: none of its messages is known to come after any image.
    """
    try:
        with broker_connection(app, _PROBE_TIMEOUT_S) as conn, conn.channel() as channel:
            if getattr(channel, "client", None) is None or not hasattr(channel, "_q_for_pri"):
                return {Priority.URGENT.broker_priority: _declared_depth(conn, channel)}
            return _depths_counted_singly(channel)
    except Exception:  # broker down: status still reports what the database knows
        return None


def _declared_depth(conn: Connection, channel: Any) -> int:
    try:
        _name, count, _consumers = channel.queue_declare(QUEUE_NAME, passive=True)
    except conn.channel_errors:
        return 0  # no queue means nothing waiting
    return int(count)


def _depths_counted_singly(channel: Any) -> dict[int, int]:
    """The length of each priority list of the Redis queue (``mammo``, ``mammo:1`` ...
    ``mammo:9``, kombu's names), in a pipeline without MULTI: a Redis that refuses writes
    (OOM) refuses the MULTI block kombu counts them in, and its refusal read as "no queue"
    made a full broker holding a backlog report a depth of 0. LLEN alone is a read, which
    it answers. A list Redis dropped (empty) counts 0."""
    steps = list(channel.priority_steps)
    with channel.client.pipeline(transaction=False) as pipe:
        for step in steps:
            pipe.llen(channel._q_for_pri(QUEUE_NAME, step))
        lengths = pipe.execute()
    return {step: int(length) for step, length in zip(steps, lengths, strict=True)}
