"""The embedded worker: a real Celery worker on the in-memory transport, in this process.

``mammo run`` uses it so that a laptop needs no servers, yet the task code, acks, claims and
upserts are exactly those of the distributed workers. The solo pool runs tasks in the worker
thread; TensorFlow is loaded there on first use.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from shared.queue import QUEUE_NAME
from worker.runtime import WorkerRuntime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


class EmbeddedHandle:
    def __init__(self, worker: Any, thread: threading.Thread) -> None:
        self.worker = worker
        self.thread = thread

    def alive(self) -> bool:
        return self.thread.is_alive()


@contextmanager
def embedded_worker(app: Celery, runtime: WorkerRuntime) -> Iterator[EmbeddedHandle]:
    if not app.conf.broker_url.startswith("memory://"):
        raise ValueError("the embedded worker runs on the in-memory transport only")
    register_tasks(app, runtime)
    worker = app.WorkController(
        pool="solo", concurrency=1, hostname=f"embedded@{socket.gethostname()}",
        queues=[QUEUE_NAME], without_heartbeat=True, without_mingle=True,
        without_gossip=True, ready_callback=None, loglevel=logging.WARNING,
    )

    def run() -> None:
        # The solo pool looks tasks up on the thread's *current* app; make it ours.
        app.set_current()
        worker.start()

    thread = threading.Thread(target=run, name="mammo-embedded-worker", daemon=True)
    thread.start()
    try:
        yield EmbeddedHandle(worker, thread)
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("embedded worker did not stop within 30 s")
        runtime.close()
