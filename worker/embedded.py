"""The embedded worker: a real Celery worker on the in-memory transport, in this process.

``mammo run`` uses it so that a laptop needs no servers, yet the task code, acks, claims and
upserts are exactly those of the distributed workers. The solo pool runs tasks in the worker
thread, except a retry scheduled for later (a chunk that met a database outage): the
in-memory transport has no event loop, so Celery runs it from its timer thread when it is due,
beside the chunk the worker thread may be running (the classifier takes one batch at a time).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery import Celery
from celery.app.trace import setup_worker_optimizations
from celery.signals import task_failure

from shared.notify import records
from shared.queue import QUEUE_NAME, TASK_PROCESS_CHUNK
from shared.timeutil import utcnow
from worker.runtime import WorkerRuntime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


class EmbeddedHandle:
    def __init__(self, worker: Any, thread: threading.Thread) -> None:
        self.worker = worker
        self.thread = thread
        # Chunks that failed for good (retries spent on a database that refuses writes, or a
        # bug): their images will never finish here, so whoever waits on them must stop.
        self.failures: list[BaseException] = []

    def alive(self) -> bool:
        return self.thread.is_alive()


@contextmanager
def embedded_worker(app: Celery, runtime: WorkerRuntime) -> Iterator[EmbeddedHandle]:
    if not app.conf.broker_url.startswith("memory://"):
        raise ValueError("the embedded worker runs on the in-memory transport only")
    register_tasks(app, runtime)
    hostname = f"embedded@{socket.gethostname()}"
    # What `celery worker` does first and a bare WorkController does not: make this app the
    # process's current and default one. A task runs in whichever thread delivers it, and a
    # thread without an app of its own (Celery's timer thread, which runs a retry when it is
    # due) looked the task up on Celery's empty default app: every retried chunk was dropped
    # as "never registered" and the run waited for it forever. One embedded worker per
    # process, as one app per `celery worker`.
    setup_worker_optimizations(app, hostname)
    worker = app.WorkController(
        pool="solo", concurrency=1, hostname=hostname,
        queues=[QUEUE_NAME], without_heartbeat=True, without_mingle=True,
        without_gossip=True, ready_callback=None, loglevel=logging.WARNING,
    )

    thread = threading.Thread(target=worker.start, name="mammo-embedded-worker", daemon=True)
    handle = EmbeddedHandle(worker, thread)

    def on_failure(exception: BaseException | None = None, **_: Any) -> None:
        handle.failures.append(exception or RuntimeError("a chunk task failed"))

    task = app.tasks[TASK_PROCESS_CHUNK]
    task_failure.connect(on_failure, sender=task, weak=False)
    started = utcnow()
    thread.start()
    try:
        yield handle
    finally:
        task_failure.disconnect(on_failure, sender=task)
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("embedded worker did not stop within 30 s")
        _drop_undelivered(app)
        runtime.close()  # first: its notification senders finish what they can
        _report_unsent_notifications(runtime, since=started)


def _drop_undelivered(app: Celery) -> None:
    """Empty the in-memory queue this run leaves: kombu keeps it for the whole process, so
    a later embedded worker in it (another database, a test) would take these ids for its own
    images. Nothing is lost: the images stay queued in the database, and the next run (or
    `mammo recover`) sends them again."""
    try:
        dropped = app.control.purge()
    except Exception as exc:  # the run's outcome stands
        log.warning("could not empty the in-memory queue: %s", type(exc).__name__)
        return
    if dropped:
        log.info("%d message(s) left in the in-memory queue dropped; their images stay "
                 "queued in the database", dropped)


def _report_unsent_notifications(runtime: WorkerRuntime, *, since: datetime) -> None:
    """One line when this run leaves notifications owed (failed, or pending because the
    worker was stopped mid-send): they are not lost, but someone has to send them."""
    if not runtime.notifier.channels:
        return
    try:
        with runtime.sessions() as session:
            unsent = records.unsent_since(session, since)
    except Exception as exc:  # the run's outcome stands; this is advice only
        log.warning("could not check this run's notifications: %s", type(exc).__name__)
        return
    if unsent:
        log.warning("%d notification(s) of this run not delivered (failed or still pending): "
                    "`mammo recover` sends them (the sweeper of a `mammo worker` also does)",
                    unsent)
