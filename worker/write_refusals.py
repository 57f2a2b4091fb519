"""A broker that refuses writes is a lost connection, not a reason for the worker to exit.

Redis answers a worker's writes (an ack, the bookkeeping of a received message, the restore
lock taken at every connect) with OOM once it reaches its maxmemory under ``noeviction`` or a
``volatile-*`` policy, and with READONLY when the worker is left connected to a replica after
a failover. Both are ``ResponseError``s, which kombu classes as channel errors and Celery's
consumer as "Unrecoverable": every worker exited 1, and one started while Redis was full
exited again ~10 s later, every restart. Both pass by themselves (memory freed, a reconnect
that reaches the new primary), so the consumer now treats them as it treats a lost
connection: it logs the loss, reconnects, and resumes once Redis takes writes again. Any
other refusal (an ACL's NoPermissionError) still stops the worker with its message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state

from shared.queue import WRITE_REFUSALS, broker_write_refusal
from shared.reachability import Backoff

log = logging.getLogger(__name__)


class WriteRefusalsAreConnectionLoss(bootsteps.StartStopStep):
    """Consumer step: makes ``WRITE_REFUSALS`` end the connection and not the worker, and,
    while the broker still refuses writes, paces the reconnects.

    Celery's consumer retries the channel errors in its ``channel_errors`` when
    ``broker_channel_error_retry`` is on (``install_write_refusal_retry`` turns it on), and
    reads them nowhere else; ``Consumer.__init__`` sets them before it applies its blueprint,
    which builds this step, so they are narrowed here to the refusals alone. They are not
    added to its ``connection_errors`` instead: those are also what an ack or a reject may
    fail with quietly, and an ack refused quietly left its message counted against the
    prefetch limit for ever: the worker fetched nothing more, even after Redis was freed.
    Refused loudly, it ends the connection, and the reconnect starts afresh.
    """

    label = "write refusals"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        parent.channel_errors = WRITE_REFUSALS
        self._app: Celery = parent.app
        self._waits = 0

    def include(self, parent: Any) -> bool:
        """Included first in the consumer's steps, so that each (re)start runs this step's
        pause before the Connection step connects: the connect itself is what a full Redis
        refuses first (kombu takes its restore lock there)."""
        included = bool(super().include(parent))
        if included:
            parent.steps.remove(self)
            parent.steps.insert(0, self)
        return included

    def start(self, parent: Any) -> None:
        """Before each (re)connect: while Redis says it refuses writes, wait (1 s doubling to
        30 s, cut short once it takes them); then connect regardless, since the attempt is
        what tells, and a connection refused again brings the consumer back here."""
        refusal = broker_write_refusal(self._app)
        if refusal is None:
            self._waits = 0
            return
        pause = _BACKOFF.pause_s(self._waits)
        self._waits += 1
        log.warning("the message broker refuses writes (%s): the worker reconnects as soon "
                    "as it takes them again (checked every second), or in %g s at the latest",
                    refusal, pause)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            state.maybe_shutdown()  # a SIGTERM while waiting stops the worker as usual
            time.sleep(1.0)
            if broker_write_refusal(self._app) is None:
                log.warning("the message broker takes writes again: reconnecting")
                self._waits = 0
                return


_BACKOFF = Backoff(first_s=1.0, cap_s=30.0)


def install_write_refusal_retry(app: Celery) -> None:
    app.conf.broker_channel_error_retry = True  # the channel errors: the step's, above
    app.steps["consumer"].add(WriteRefusalsAreConnectionLoss)
