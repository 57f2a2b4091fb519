"""``mammo run``: submit to the in-memory queue and drain it with an in-process worker.

It is the distributed pipeline with both ends in one process: the same registration, the
same Celery task, the same claims and upserts. Only the transport differs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from celery.signals import task_success
from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from models.activation import model_for
from models.registry import ModelSpec, resolve_model, verify_model
from producer.registration import ingestion_for
from producer.submission import SubmitOutcome, submit
from shared.config import Settings
from shared.db.engine import failed_command_as_error
from shared.db.schema import Image
from shared.enums import ImageState, Priority
from shared.errors import DatabaseUnavailableError, UserFacingError, first_line
from shared.extras import WORKER, require
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.queue import create_celery_app, enqueue_chunks
from shared.recovery import held_claims, take_over_expired

if TYPE_CHECKING:
    from celery import Celery

    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (finished, total)
_T = TypeVar("_T")


class EmbeddedWorkerDied(UserFacingError):
    pass


@dataclass
class RunOutcome:
    submission: SubmitOutcome
    seconds: float  # reading the headers plus classifying, the model's load left out
    model_load_seconds: float  # 0 when nothing waited: the model was not loaded

    @property
    def images_per_s(self) -> float:
        """The images this run waited on per second of processing, its load left out: a
        202 s load beside 300 images read as 0.3 images/s."""
        return len(self.submission.waiting_on) / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Registered:
    """A run's files, registered and queued in its own process's queue."""

    submission: SubmitOutcome
    seconds: float


def check_model(settings: Settings,
                sessions: sessionmaker[Session] | None = None) -> ModelSpec:
    """Find and verify the model without importing TensorFlow: fail before any work.

    With ``sessions``, a model activated in the database (``mammo models activate``) is used
    when ``MAMMO_MODEL`` is left at its default.
    """
    if sessions is None:
        spec = resolve_model(settings.model)
    else:
        with sessions() as session:
            spec = model_for(settings, session)
    verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    return spec


def _runtime(settings: Settings,
             sessions: sessionmaker[Session] | None = None) -> WorkerRuntime:
    # Imported here so that `mammo submit` and `mammo status` never pay for the worker side.
    from worker.runtime import WorkerRuntime

    return WorkerRuntime(settings, model_spec=check_model(settings, sessions))


@dataclass(frozen=True)
class PreparedRun:
    """``mammo run`` with its model verified (``prepare_run``), in three steps a caller can
    show one by one: read and queue the files, load the model, classify."""

    settings: Settings  # embedded
    sessions: sessionmaker[Session]
    runtime: WorkerRuntime
    manifest: Path | None
    app: Celery

    def register(self, paths: Sequence[Path], *, name: str | None = None,
                 on_file: Callable[[Path], None] | None = None) -> Registered:
        started = time.perf_counter()
        outcome = submit(self.settings, self.sessions, self.app, paths, name=name,
                         mode="embedded", requeue_unfinished_duplicates=True, on_file=on_file,
                         manifest=self.manifest)
        return Registered(outcome, time.perf_counter() - started)

    def load_model(self, registered: Registered) -> bool:
        """Load the model if any image waits; whether it was. A re-run of a folder whose
        every file is known spent the model's load (18 s for the shipped one) on nothing."""
        if not registered.submission.waiting_on:
            return False
        self.runtime.classifier.load()  # (the property loads it)
        return True

    def process(self, registered: Registered, *,
                progress: Progress | None = None) -> RunOutcome:
        started = time.perf_counter()
        drain(self.app, self.runtime, self.sessions, registered.submission.waiting_on,
              progress=progress)
        return RunOutcome(registered.submission,
                          registered.seconds + time.perf_counter() - started,
                          self.runtime.model_load_seconds)

    def run(self, paths: Sequence[Path], *, name: str | None = None,
            on_file: Callable[[Path], None] | None = None,
            progress: Progress | None = None) -> RunOutcome:
        registered = self.register(paths, name=name, on_file=on_file)
        self.load_model(registered)
        return self.process(registered, progress=progress)


def prepare_run(settings: Settings, sessions: sessionmaker[Session], *,
                manifest: Path | None = None) -> PreparedRun:
    settings = settings.embedded()
    if manifest is not None:
        # Read once here only to refuse a bad one now, not after the files' headers.
        ingestion_for(settings, manifest)
    runtime = _runtime(settings, sessions)  # no model: fails here, before anything is queued
    # Nor without TensorFlow, which the model's load (after the files are read) imports.
    require(WORKER, needed_for="Classifying images")
    return PreparedRun(settings, sessions, runtime, manifest, create_celery_app(settings))


def run_embedded(
    settings: Settings, sessions: sessionmaker[Session], paths: Sequence[Path], *,
    name: str | None = None, on_file: Callable[[Path], None] | None = None,
    progress: Progress | None = None, manifest: Path | None = None,
) -> RunOutcome:
    return prepare_run(settings, sessions, manifest=manifest).run(
        paths, name=name, on_file=on_file, progress=progress)


def process_ids_embedded(settings: Settings, sessions: sessionmaker[Session],
                         image_ids: Sequence[int], *, claimed: Sequence[int] = (),
                         progress: Progress | None = None) -> int:
    """Run already-registered images (``mammo recover`` without a broker): ``image_ids``
    are sent now; ``claimed`` (another process's claims) are waited for and taken over once
    their lease has passed, as ``mammo run`` does. Returns how many this process finished:
    a live run beside it may finish some."""
    settings = settings.embedded()
    runtime = _runtime(settings, sessions)
    app = create_celery_app(settings)
    enqueue_chunks(app, image_ids, chunk_size=settings.chunk_size, priority=Priority.ROUTINE)
    return drain(app, runtime, sessions, [*image_ids, *claimed], progress=progress)


@contextmanager
def embedded_worker_service(
    settings: Settings, sessions: sessionmaker[Session] | None = None,
) -> Iterator[tuple[Celery, Callable[[], bool]]]:
    """A long-running in-process worker (``mammo watch`` without a broker).

    Yields the app to send to and a liveness check; the worker stops when the block ends.
    """
    from worker.embedded import embedded_worker

    settings = settings.embedded()
    runtime = _runtime(settings, sessions)  # no model: fails here, before anything is queued
    app = create_celery_app(settings)
    with embedded_worker(app, runtime) as handle:
        yield app, handle.alive


def drain(app: Celery, runtime: WorkerRuntime, sessions: sessionmaker[Session],
          image_ids: Sequence[int], *, progress: Progress | None = None,
          poll_s: float = 0.25, takeover_every_s: float = 5.0) -> int:
    """Run the in-process worker until every one of ``image_ids`` is done or failed; return
    how many of them this process finished (the others, another process did).

    Images another process holds (an earlier run killed mid-chunk, or one still going) are
    waited for, and said so; once their claim's lease passes they are re-sent here, as the
    sweeper of a distributed worker would: nothing else in this process would send them.
    A database outage is waited out as long as the chunks retry it (about 4 min): the chunk
    that met it finishes once it is over, and this loop must still be there to see that.
    """
    from worker.embedded import embedded_worker
    from worker.tasks import transient_budget_s

    ids = list(dict.fromkeys(image_ids))  # counted once each: the query counts distinct rows
    if not ids:
        return 0
    _say_held_claims(runtime.settings, sessions, ids)  # before our own worker claims any
    next_takeover = time.monotonic()  # a lease already passed is not waited for
    outage = _Outage(runtime.settings.database_url, budget_s=transient_budget_s())
    finished = 0
    with _finished_here(app) as here, embedded_worker(app, runtime) as handle:
        while True:
            counted = outage.attempt(lambda: _count_terminal(sessions, ids))
            if counted is not None:
                finished = counted
                if progress:
                    progress(finished, len(ids))
                if finished >= len(ids):
                    break
            cause = handle.failures[0] if handle.failures else outage.given_up()
            if cause is not None:
                raise _unfinished(len(ids) - finished, cause)
            if not handle.alive():
                raise EmbeddedWorkerDied("the embedded worker stopped unexpectedly; "
                                         "see the log above, then run `mammo recover`")
            if counted is not None and time.monotonic() >= next_takeover:
                outage.attempt(lambda: _take_over_expired(app, runtime.settings, sessions, ids))
                next_takeover = time.monotonic() + takeover_every_s
            time.sleep(poll_s)
    # Read once the worker has stopped: a chunk's result comes just after its images show
    # finished.
    return min(here.count, len(ids))


def _say_held_claims(settings: Settings, sessions: sessionmaker[Session],
                     ids: list[int]) -> None:
    with sessions() as session:
        held = held_claims(session, settings, ids)
    if held.count:
        log.warning("waiting for %s; then this run takes them over", held.describe())


def _take_over_expired(app: Celery, settings: Settings, sessions: sessionmaker[Session],
                       ids: list[int]) -> None:
    taken = take_over_expired(sessions, app, settings, ids)
    if taken:
        log.warning("took over %d image(s) whose claim's lease ended (the process holding "
                    "them stopped)", len(taken))


class _Outage:
    """The polling loop's database outage: waited out for ``budget_s``, said once when it
    starts and once when it ends; anything but an unreachable database is raised at once."""

    def __init__(self, database_url: str, *, budget_s: float) -> None:
        self._database_url = database_url
        self._budget_s = budget_s
        self._since: float | None = None
        self._error: DatabaseUnavailableError | None = None

    def attempt(self, read: Callable[[], _T]) -> _T | None:
        """``read()``, or None while the database is unreachable."""
        try:
            value = read()
        except DatabaseError as exc:
            self._met(exc)
            return None
        if self._since is not None:
            log.warning("the database is back after %.0f s; this run goes on",
                        time.monotonic() - self._since)
            self._since = self._error = None
        return value

    def _met(self, exc: DatabaseError) -> None:
        error = failed_command_as_error(self._database_url, exc)
        if not isinstance(error, DatabaseUnavailableError):
            raise exc  # reached and found corrupted, or a bug: no wait mends it
        self._error = error
        if self._since is None:
            self._since = time.monotonic()
            log.warning("cannot reach the database (%s): this run waits for the database up "
                        "to %.0f min, as its chunks retry, then stops and keeps the queued "
                        "work", first_line(exc.orig or exc), self._budget_s / 60)

    def given_up(self) -> DatabaseUnavailableError | None:
        """Why the run must stop, once the outage has outlasted the chunks' retries."""
        if self._since is None or self._error is None:
            return None
        waited = time.monotonic() - self._since
        if waited < self._budget_s:
            return None
        return DatabaseUnavailableError(f"the database stayed unreachable for {waited:.0f} s "
                                        f"({self._error})")


@contextmanager
def _finished_here(app: Celery) -> Iterator[_Tally]:
    """Counts the images this process's chunks finished (done or failed), from each
    chunk's result: an image that another process finished meanwhile is not among them."""
    tally = _Tally()

    def on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and isinstance(result, dict):
            tally.add(int(result.get("done", 0)) + int(result.get("failed", 0)))

    task_success.connect(on_success, weak=False)
    try:
        yield tally
    finally:
        task_success.disconnect(on_success)


class _Tally:
    # A retried chunk runs in Celery's timer thread, beside the worker thread's chunk.
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, images: int) -> None:
        with self._lock:
            self.count += images


def _unfinished(count: int, cause: BaseException) -> UserFacingError:
    """Waiting on would never end: say why, and that nothing is lost."""
    message = (f"{count} image(s) cannot be finished in this run: {cause}. They stay queued "
               f"in the database; once the cause is fixed, run the same command again or "
               f"`mammo recover`.")
    if isinstance(cause, DatabaseUnavailableError):
        return DatabaseUnavailableError(message)
    return EmbeddedWorkerDied(message)


def _count_terminal(sessions: sessionmaker[Session], ids: list[int]) -> int:
    return _count_in(sessions, ids, ImageState.terminal())


def count_failed(sessions: sessionmaker[Session], ids: Sequence[int]) -> int:
    """How many of ``ids`` ended failed: a run's exit status says so."""
    return _count_in(sessions, ids, [ImageState.FAILED])


def _count_in(sessions: sessionmaker[Session], ids: Sequence[int],
              states: Iterable[ImageState]) -> int:
    wanted = [s.value for s in states]
    total = 0
    with sessions() as session:
        for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            chunk = list(ids[start:start + 900])
            total += session.execute(select(func.count()).select_from(Image).where(
                Image.id.in_(chunk), Image.state.in_(wanted))).scalar_one()
    return total
