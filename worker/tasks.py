"""The Celery task: thin wrapper over ``worker.pipeline.process_chunk``.

Tasks are registered on an app passed in (no module-level app), with a runtime that owns the
per-process resources. Transient failures (database unreachable) retry with backoff far
below the visibility timeout; input failures are recorded by the pipeline and never retried.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import signal
from typing import Any, NoReturn

from celery import Celery, Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from shared.db import lifecycle
from shared.db.schema import Image
from shared.errors import DatabaseUnavailableError, TransientError, UserFacingError
from shared.queue import TASK_PROCESS_CHUNK
from shared.recovery import leave_to_sweeper, requeue
from shared.save_failures import clear_failure, database_reason, record_failure
from worker import scratch
from worker.devices import pin_child_to_gpu
from worker.pipeline import process_chunk
from worker.runtime import ModelUnavailableError, WorkerRuntime
from worker.stall import Stall, StallWatch

log = logging.getLogger(__name__)

# About 4 minutes of backoff before a chunk fails for good (2, 4, 8, ... s, at most 60, each
# within a fifth of that: 3 min 14 s to 4 min 50 s in all); the sweeper re-queues its images
# later, and an embedded run stops and says why.
TRANSIENT_RETRIES = 8
_BACKOFF_FIRST_S, _BACKOFF_MAX_S, _BACKOFF_JITTER = 2, 60, 0.2
# `mammo worker`'s exit status when its processes cannot load the model: "no usable model"
# (producer.cli.exit_codes.ExitCode.NO_MODEL; the worker side does not import the CLI).
EXIT_NO_MODEL = 5


def transient_backoff_s(retries: int) -> float:
    """The wait before retry ``retries + 1`` of a chunk that met a transient failure.

    Jittered so that workers whose chunks met one outage do not all return at once, but
    only by a fifth: Celery's ``retry_jitter`` draws each wait anywhere from 0 to its
    nominal value, which halved the budget (often 2 minutes, not 4) and made it vary.
    """
    return _nominal_backoff_s(retries) * random.uniform(1 - _BACKOFF_JITTER, 1 + _BACKOFF_JITTER)


def transient_budget_s() -> float:
    """How long a chunk may still retry a transient failure, its waits at their longest
    (about 5 min 50 s): whoever waits on the chunks (an embedded run's polling loop) waits
    at least this long, so it never gives up on a chunk whose retry is still to come."""
    nominal = sum(_nominal_backoff_s(retries) for retries in range(TRANSIENT_RETRIES))
    # Plus a minute for the tries themselves: each decodes and scores its chunk again, and
    # meets the outage only when it saves (a connect timeout more).
    return float(nominal * (1 + _BACKOFF_JITTER)) + 60.0


def _nominal_backoff_s(retries: int) -> int:
    return min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** retries)


def register_tasks(app: Celery, runtime: WorkerRuntime, *, warm_up: bool = False,
                   gpus: int = 0) -> None:
    """Register the task; with ``warm_up`` (``mammo worker``), log which database and model
    it works on, and each prefork child also takes its own GPU (of ``gpus``) and loads the
    model as soon as it starts."""
    if TASK_PROCESS_CHUNK in app.tasks:
        return
    stop = _model_stop(app, runtime, warm_up=warm_up)

    # shared=False: Celery would otherwise hand this closure (and its runtime) to every app
    # created later in the process, e.g. a second `run_embedded` on another database.
    @app.task(
        name=TASK_PROCESS_CHUNK, bind=True, shared=False, acks_late=True,
        reject_on_worker_lost=True, max_retries=TRANSIENT_RETRIES,
    )
    def process_chunk_task(self: Task, image_ids: list[int]) -> dict[str, int]:
        token = str(self.request.id)
        watch = StallWatch()
        try:
            with watch:
                result = process_chunk(image_ids, token=token, runtime=runtime)
        except SoftTimeLimitExceeded:
            _requeue_one_by_one(app, runtime, image_ids, token, stall=watch.stall())
            return {"timed_out": len(image_ids)}
        except ModelUnavailableError as exc:
            _model_unavailable(stop, exc)
        except TransientError as exc:
            _save_failed(app, runtime, exc)
            try:
                # Retries spent, Celery raises ``exc`` itself: the task fails with its reason.
                raise self.retry(exc=exc, countdown=transient_backoff_s(self.request.retries)
                                 ) from exc
            except Retry:
                _retry_sent(runtime, image_ids)
                raise
            except Exception:
                # No retry is coming (spent, or its message not sent: Reject): the images
                # handed back, or never claimed, wait for no message in the broker.
                leave_to_sweeper(runtime.sessions, image_ids)
                raise
        _saved(app, runtime, result.claimed)
        if result.claimed < len(image_ids):
            _warn_unknown_ids(runtime, image_ids, token)
        return result.as_dict()

    if stop is not None:
        stop.connect(gpus)


def _model_stop(app: Celery, runtime: WorkerRuntime, *, warm_up: bool) -> ModelStop | None:
    """Only a `mammo worker` (``warm_up``) stops itself when its processes cannot load the
    model; an embedded run's chunk fails instead, and the run stops saying why."""
    return ModelStop(app, runtime) if warm_up else None


def _model_unavailable(stop: ModelStop | None, exc: ModelUnavailableError) -> NoReturn:
    """A chunk met a process that cannot load the model; nothing was claimed."""
    if stop is None:
        raise exc  # an embedded run: the chunk fails, its images stay queued
    stop.hand_back(exc)


class ModelStop:
    """Stops a `mammo worker` whose processes cannot load its model, with exit 5.

    A pool process that cannot load the model (``ModelUnavailableError``) scores nothing;
    left alone it stayed "live" in `mammo status` and took messages it could only hand back.
    It logs why, writes the reason into a page of memory shared across the fork, and sends
    the worker's parent SIGTERM: Celery's warm shutdown, in which the other processes
    finish their chunks and unacknowledged messages go back to the broker. At the end of
    that shutdown (``worker_shutdown``) the parent logs the reason and exits 5 (no usable
    model), so a service manager or an operator sees a model problem, not a clean stop.
    The chunks such a process is handed meanwhile are rejected unclaimed (``Reject``,
    requeued): no image is charged an attempt.

    The parent pins the model's verified bytes before the pool forks
    (``WorkerRuntime.pin_model``), so a change to the model's files on disk never gets
    here: this is for a process that cannot load even those (no room for its private
    copy, TensorFlow refusing the model).
    """

    def __init__(self, app: Celery, runtime: WorkerRuntime) -> None:
        self._app = app
        self._runtime = runtime
        self._parent = os.getpid()
        # Anonymous and MAP_SHARED: the pool processes forked later write into this page.
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self._told: int | None = None  # the process that logged why it cannot score


    def connect(self, gpus: int) -> None:
        """Say which database and model the worker uses, and wire its start and stop: pin
        the model in the parent before the pool forks; in each pool process, take a GPU (of
        ``gpus``) and load everything."""
        log.info("mammo worker: %s", self._runtime.describe())
        if (mismatch := self._runtime.model_mismatch()) is not None:
            log.warning("mammo worker: %s", mismatch)
        worker_init.connect(self.pin_model, weak=False)
        # Runs in each prefork child after the fork: the only safe place to load TensorFlow.
        # First: its private temporary directory, before TensorFlow or a forkserver make
        # files that a pool process's os._exit would leave in TMPDIR (worker.scratch).
        worker_process_init.connect(scratch.enter, weak=False)
        worker_process_init.connect(pin_child_to_gpu(gpus), weak=False)
        worker_process_init.connect(self.warm_up_child, weak=False)
        worker_process_shutdown.connect(self._runtime.close, weak=False)
        worker_process_shutdown.connect(scratch.leave, weak=False)  # its decoders stopped
        worker_shutdown.connect(scratch.sweep, weak=False)  # before exit 5 is raised
        worker_shutdown.connect(self.exit_if_requested, weak=False)

    def pin_model(self, sender: Any = None, **_: Any) -> None:
        """``worker_init``, in the parent before the pool forks: pin the model, or stop the
        worker at once (exit 5): it was changed or removed since the worker checked it."""
        if getattr(sender, "app", None) is not self._app:
            return  # another app's worker in this process (tests)
        try:
            self._runtime.pin_model()
        except UserFacingError as exc:  # ModelNotFoundError, ModelIntegrityError
            # Before Celery's try: SystemExit passes it (and its signal dispatch, which
            # catches Exception only) and ends `mammo worker` with this status.
            log.error("mammo worker: no usable model: %s", exc)
            raise SystemExit(EXIT_NO_MODEL) from exc

    def warm_up_child(self, **_: Any) -> None:
        """``worker_process_init``: load everything now; stop the worker if the model
        cannot be loaded."""
        try:
            self._runtime.warm_up()
        except ModelUnavailableError as exc:
            self.request(str(exc))

    def request(self, reason: str) -> None:
        """In a pool process: stop the worker (once), saying why."""
        if self._told != os.getpid():  # once per process, not for every chunk it hands back
            self._told = os.getpid()
            log.error("%s. This worker stops (exit 5: no usable model); the chunks sent to "
                      "it go back to the queue unclaimed, no image charged an attempt", reason)
        if self._page[0] != 0:
            return  # asked already, by this process or another
        data = reason.encode("utf-8", "replace")[:mmap.PAGESIZE - 2]
        self._page[1:1 + len(data)] = data
        self._page[0] = 1
        # The parent's SIGTERM is Celery's warm shutdown. Never when the parent is gone (a
        # pool process reparented to init) or when this is the parent itself.
        if os.getpid() != self._parent and os.getppid() == self._parent:
            os.kill(self._parent, signal.SIGTERM)

    def hand_back(self, exc: ModelUnavailableError) -> NoReturn:
        """A chunk reached a process that cannot load the model: stop the worker, and give
        the message back to the broker for another worker (acks_late held it unacknowledged
        until now). Nothing was claimed: its images are still queued, no attempt charged."""
        self.request(str(exc))
        raise Reject(str(exc), requeue=True) from exc

    def requested(self) -> str | None:
        """Why a pool process asked the worker to stop, or None."""
        if self._page[0] == 0:
            return None
        return bytes(self._page[1:]).split(b"\0", 1)[0].decode("utf-8", "replace")

    def exit_if_requested(self, sender: Any = None, **_: Any) -> None:
        """``worker_shutdown``, in the parent: exit 5 when a pool process asked for it.

        Raised after Celery's shutdown has stopped the pool and the consumer; SystemExit
        passes Celery's signal dispatch (it catches Exception only) and ends the
        `mammo worker` process with this status."""
        if os.getpid() != self._parent or getattr(sender, "app", None) is not self._app:
            return
        reason = self.requested()
        if reason is None:
            return
        log.error("mammo worker: stopped with exit 5 (no usable model): %s. Fix or restore "
                  "the model, then start the worker again; the images sent to it stay "
                  "queued for any worker", reason)
        raise SystemExit(EXIT_NO_MODEL)


# The worker names (``WorkerRuntime.worker_name``) that recorded a failed save in the broker
# from this process: a successful chunk deletes the record only then, not at every chunk.
_saves_failed: set[str] = set()


def _save_failed(app: Celery, runtime: WorkerRuntime, exc: TransientError) -> None:
    """Tell `mammo status` (through the broker) that this worker's writes fail, and why: it
    hands its images back and retries, the database answers reads, and the reason (a full
    disk) was only in this log. The record outlives the wait until this worker's next
    failure (a retry's backoff, then the chunk computed again up to its save)."""
    if not isinstance(exc, DatabaseUnavailableError):
        return
    _saves_failed.add(runtime.worker_name)
    record_failure(app, runtime.worker_name, database_reason(exc),
                   ttl_s=runtime.settings.task_time_limit_s + 2 * _BACKOFF_MAX_S)


def _saved(app: Celery, runtime: WorkerRuntime, claimed: int) -> None:
    """A chunk ended without error: if it ``claimed`` images, it saved them, and this
    worker's failures, if it recorded any, are over."""
    if claimed and runtime.worker_name in _saves_failed:
        _saves_failed.discard(runtime.worker_name)
        clear_failure(app, runtime.worker_name)


def _retry_sent(runtime: WorkerRuntime, image_ids: list[int]) -> None:
    """The retry's message is sent: the images the chunk handed back (``lifecycle.release``)
    are no longer owed one, which a watcher's scan or, after its wait, a sweep would send.

    Best effort: the database may be what the chunk is retrying. Left owed, they get at
    worst a second message, a no-op."""
    try:
        with runtime.sessions() as session:
            lifecycle.mark_enqueued(session, image_ids, owed_only=True)
            session.commit()
    except SQLAlchemyError as exc:
        log.debug("chunk retry: could not stamp its images sent: %s", type(exc).__name__)


def _requeue_one_by_one(app: Celery, runtime: WorkerRuntime, image_ids: list[int],
                        token: str, *, stall: Stall | None = None) -> None:
    """A chunk ran out of time: hand its unfinished images back, each as its own task.

    The attempt counter is kept, so an image that times out on its own is quarantined after
    ``max_attempts`` instead of looping; unless ``stall`` (the chunk's ``StallWatch``) shows
    the process frozen for so much of the limit that the chunk did not compute for most of
    it (a paused VM, a swap storm): then the attempt is refunded, or a few such stalls
    quarantined healthy images as ``poison``. They are owed their messages until
    ``requeue`` sends them: one that fails leaves them to the next sweep, whatever the
    broker holds.
    """
    soft_limit_s = float(app.conf.task_soft_time_limit or runtime.settings.task_time_limit_s)
    refund = stall is not None and not stall.spent_the_limit(soft_limit_s)
    with runtime.sessions() as session:
        mine = lifecycle.release(session, image_ids, token, refund=refund)
    if refund and stall is not None:
        log.warning("chunk %s hit its soft time limit (%.0f s) having computed for %.0f s: "
                    "this worker process was frozen for %.0f s meanwhile (a paused VM, "
                    "swapping, SIGSTOP), which is not its images' doing; re-queued %d "
                    "images singly, their attempts refunded", token, soft_limit_s,
                    stall.computed_s, stall.frozen_s, len(mine))
    else:
        log.warning("chunk %s hit its soft time limit; re-queued %d images singly", token,
                    len(mine))
    # Each at its batch's priority: an urgent chunk that timed out stays urgent.
    requeue(runtime.sessions, app, runtime.settings, mine, chunk_size=1)


def _warn_unknown_ids(runtime: WorkerRuntime, image_ids: list[int], token: str) -> None:
    """Say so when a chunk names images this database does not hold.

    Unclaimed images are normally another worker's or already done (a duplicate message);
    images that do not exist at all mean the producer queued them in another database, and
    this worker is consuming that batch's messages as no-ops. The message stays a no-op:
    claiming nothing is what keeps a chunk idempotent.
    """
    try:
        with runtime.sessions() as session:
            found = session.scalar(
                select(func.count()).select_from(Image).where(Image.id.in_(image_ids)))
    except SQLAlchemyError as exc:  # advice only: the chunk's outcome stands
        log.debug("chunk %s: could not count its images: %s", token, type(exc).__name__)
        return
    missing = len(set(image_ids)) - (found or 0)
    if missing:
        log.warning("chunk %s: %d of its %d image id(s) are not in this worker's database %s: "
                    "is the worker on the wrong database (MAMMO_DATABASE_URL)? The producer "
                    "that queued them must share it; the message is dropped as a no-op",
                    token, missing, len(set(image_ids)), runtime.shown_database)
