"""Per-process resources of a worker: database engine, classifier, decoder pool, model row.

Built lazily and keyed by PID: a prefork child never reuses its parent's connections or
TensorFlow state, which is what makes fork safe here.

A `mammo worker` takes its model's bytes once, in the parent, before the pool forks
(``pin_model``), and every pool process loads those bytes, never the files again: see
``pin_model`` for why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, make_url, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.activation import model_for, register
from models.registry import MODEL_FILE, ModelSpec
from shared.config import Settings
from shared.db.engine import (
    analyze_if_never_analyzed,
    create_db_engine,
    make_session_factory,
)
from shared.db.schema import ModelVersion
from shared.errors import ModelIntegrityError, ModelNotFoundError
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.imaging.readers.messages import described
from shared.notify import Notifier
from shared.urls import redact_url
from worker.classifier import Classifier
from worker.decoding import ChunkDecoder

log = logging.getLogger(__name__)


class ModelUnavailableError(Exception):
    """This process cannot load (or register) the model it was started with. Raised before
    any image is claimed: no image may be charged an attempt, or quarantined as ``poison``,
    for what is the model's fault. ``mammo worker`` stops on it (exit 5)."""


class WorkerRuntime:
    def __init__(self, settings: Settings, *, model_spec: ModelSpec | None = None) -> None:
        self.settings = settings
        self._model_spec = model_spec
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._classifier: Classifier | None = None
        self._decoder: ChunkDecoder | None = None
        self._model_version_id: int | None = None
        # The verified bytes of model.keras, taken by ``pin_model`` in a worker's parent.
        self._model_bytes: bytes | None = None
        self._model_failure: ModelUnavailableError | None = None
        self._private_copy: Path | None = None  # where a process last loaded them from
        self._notifier: Notifier | None = None
        # Set by close(): a chunk still running after the stop (an embedded worker's thread
        # outlives its join) sends in-line, not through senders nobody would close.
        self._closed = False

    def _own_process(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._engine is not None:
            # Inherited from the parent: drop the pool without closing the parent's sockets.
            self._engine.dispose(close=False)
        self._pid, self._engine, self._sessions = pid, None, None
        self._classifier, self._model_version_id, self._notifier = None, None, None
        self._model_failure = None
        self._closed = False
        self._decoder = None  # an inherited decoder pool is the parent's: start our own

    def _database(self) -> tuple[Engine, sessionmaker[Session]]:
        """This process's engine and sessions, made on first use."""
        self._own_process()
        if self._engine is None or self._sessions is None:
            self._engine = create_db_engine(self.settings)
            self._sessions = make_session_factory(self._engine)
        return self._engine, self._sessions

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self._database()[1]

    @property
    def notifier(self) -> Notifier:
        self._own_process()
        if self._notifier is None:
            # Sends from a thread per channel: a hanging receiver never holds a chunk.
            self._notifier = Notifier(self.settings, self.sessions, background=not self._closed)
        return self._notifier

    @property
    def model_spec(self) -> ModelSpec:
        if self._model_spec is None:
            with self.sessions() as session:
                self._model_spec = model_for(self.settings, session)
        return self._model_spec

    def pin_model(self) -> None:
        """Take the model's bytes now, verified against its metadata, for every process of
        this worker to load (`mammo worker`'s parent, before its pool forks).

        A pool process is replaced at any time: the OOM killer, ``--max-tasks-per-child``,
        ``MAMMO_WORKER_MAX_MEMORY_MB``. Each replacement used to read the model's files
        again, checked against what the parent had read at start: a directory re-copied
        with another version, deleted once a newer one was activated, or a ``current``
        symlink flipped made every replacement fail its load, and every chunk it took then
        failed after claiming its images, until healthy images were quarantined as
        ``poison`` while the worker looked live. Holding the bytes (10-20 MB, shared with
        the pool processes copy-on-write) makes the model a worker scores with the one it
        verified at start, whatever happens to the files until it is restarted, which is
        what `mammo models activate` already asks for. A process that still cannot load
        them (no room for its private copy, TensorFlow refusing the model) stops the worker
        instead: see ``worker.tasks``.

        The directory is resolved (symlinks followed) first, so what is read, registered
        and logged is the version directory itself, not a link that may move.

        Also the worker's database start-up: a PostgreSQL database never analysed (restored
        or migrated, autovacuum not there yet) is analysed first, once per worker start
        (not per pool process), before the sweeps and reports plan their queries blind.
        """
        analyze_if_never_analyzed(self._database()[0])
        spec = self.model_spec
        directory = spec.directory.resolve()
        path = directory / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelNotFoundError(f"{path} cannot be read ({exc.strerror or exc}): the "
                                     "model was moved or deleted as the worker started. "
                                     "Restore it, or start the worker again.") from exc
        actual = hashlib.sha256(data).hexdigest()  # the bytes held, not the file again
        if actual != spec.sha256:
            raise ModelIntegrityError(
                f"{path} has sha256 {actual[:12]}..., but its metadata records "
                f"{spec.sha256[:12]}...: the file changed as the worker started. Re-copy "
                "it, then start the worker again.")
        self._model_spec = dataclasses.replace(spec, directory=directory)
        self._model_bytes = data
        log.info("mammo worker: model %s %s pinned: the %s bytes of %s (sha256 %s...), "
                 "verified; every worker process loads these bytes, so changes to the "
                 "model's files take effect at the next worker start", spec.name,
                 spec.version, f"{len(data):,}", path, spec.sha256[:12])

    @property
    def classifier(self) -> Classifier:
        self._own_process()
        if self._classifier is None:
            with self._loadable() as spec:
                classifier = Classifier(
                    spec, batch_size=self.settings.chunk_size,
                    preprocessing_version=PREPROCESSING_VERSION,
                    intra_op_threads=self.settings.tf_intra_op_threads,
                    inter_op_threads=self.settings.tf_inter_op_threads,
                    micro_batch=self.settings.micro_batch,
                )
                classifier.load()
            self._classifier = classifier
        return self._classifier

    @property
    def model_load_seconds(self) -> float:
        """How long this process's model took to load; 0 if it was not (``classifier``
        loads it)."""
        return self._classifier.load_seconds if self._classifier is not None else 0.0

    @contextmanager
    def _loadable(self) -> Iterator[ModelSpec]:
        """The spec to load: the model's own, or with pinned bytes, a private copy of them
        for as long as Keras reads it (it takes a path ending in .keras, not bytes)."""
        spec = self.model_spec
        if self._model_bytes is None:
            yield spec
            return
        _remove_stale_copies()
        private = self._private_copy = Path(
            tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-"))
        memory = _in_memory(self._model_bytes)
        try:
            if memory is not None:
                # The bytes in an anonymous memory file, reached through a link: a process
                # killed while it loads (the OOM killer's favourite moment) leaves no copy.
                (private / MODEL_FILE).symlink_to(f"/proc/{os.getpid()}/fd/{memory}")
            else:
                (private / MODEL_FILE).write_bytes(self._model_bytes)
            yield dataclasses.replace(spec, directory=private)
        finally:
            if memory is not None:
                os.close(memory)
            shutil.rmtree(private, ignore_errors=True)

    def require_model(self) -> None:
        """Load the model and register it (once per process), or raise
        ``ModelUnavailableError`` saying why not. Called before a chunk claims anything.

        A database error while registering is the database's, raised as it is (the chunk
        retries it). The failure is kept: a process whose model would not load does not try
        again for every chunk (the worker is stopping)."""
        self._own_process()
        if self._model_failure is not None:
            raise self._model_failure
        try:
            self.classifier  # noqa: B018 - the property loads the model
            self.model_version_id  # noqa: B018 - the property registers it
        except (SoftTimeLimitExceeded, SQLAlchemyError):
            raise
        except Exception as exc:
            spec = self.model_spec
            why = described(exc, 400)
            source = "its files"
            if self._model_bytes is not None:
                source = "its bytes, verified when the worker started"
                why = why.replace(str(self._private_copy), str(spec.directory))
            self._model_failure = ModelUnavailableError(
                f"worker process {os.getpid()} cannot load model {spec.name} {spec.version} "
                f"({spec.directory}) from {source}: {why}")
            raise self._model_failure from exc

    @property
    def decoder(self) -> ChunkDecoder:
        self._own_process()
        if self._decoder is None:
            self._decoder = ChunkDecoder(self.settings.decode_processes)
        return self._decoder

    @property
    def model_version_id(self) -> int:
        """The model's row id as registered when this process started; predictions are
        saved under ``model_row_id``, which checks it is still this model's."""
        if self._model_version_id is None:
            with self.sessions() as session:
                # The model's own spec: the classifier's may name its private copy.
                self._model_version_id = register(session, self.model_spec)
                session.commit()
        return self._model_version_id

    def model_row_id(self, session: Session) -> int:
        """This process's model's row id, checked in ``session``'s transaction (one
        indexed SELECT on name, version, sha256), for the predictions saved in it.

        The id registered at start was trusted for the process's life: a database restored
        from a backup (or the row deleted) under a running worker then failed every save
        on the foreign key, each try charging the images an attempt until healthy ones
        were quarantined as ``poison``; or, the id since given to another model (activated
        after the restore), stored this model's scores as that model's. A row gone or
        renumbered is registered again (``register``, as at start), in this transaction.
        Raises ``ModelUnavailableError`` when the database now refuses this model (another
        model holds its name and version): the caller hands its images back."""
        spec = self.model_spec
        found = session.scalar(select(ModelVersion.id).where(
            ModelVersion.name == spec.name, ModelVersion.version == spec.version,
            ModelVersion.sha256 == spec.sha256))
        cached = self._model_version_id
        if found is not None and found == cached:
            return found
        changed = (f"id {cached} is gone or another model's" if found is None
                   else f"it is id {found} now, not {cached}")
        try:
            row_id = register(session, spec)
        except ModelNotFoundError as exc:  # identity_clash, _check_seal: the rows refuse it
            self._model_failure = ModelUnavailableError(
                f"worker process {os.getpid()}: model {spec.name} {spec.version}'s row in "
                f"the database changed under it ({changed}; database restored from a "
                f"backup?), and registering it again is refused: {exc}")
            raise self._model_failure from exc
        if cached is not None:
            log.warning("model %s %s (sha256 %s...): its row in the database changed under "
                        "this worker (%s; database restored from a backup?); registered "
                        "again, its predictions are saved under id %d", spec.name,
                        spec.version, spec.sha256[:12], changed, row_id)
        self._model_version_id = row_id
        return row_id

    def describe(self) -> str:
        """The database (password masked) and model this worker uses: a worker on the wrong
        database consumes the real batch's messages as no-ops, so its first lines say which."""
        spec = self.model_spec
        return (f"database {self.shown_database} (MAMMO_DATABASE_URL), "
                f"model {spec.name} {spec.version} ({spec.directory})")

    def model_mismatch(self) -> str | None:
        """Why this worker's model differs from the activated one (an explicit MAMMO_MODEL),
        or None. Workers on one queue with different models score the views of one exam
        with different models; the exam is flagged, but an operator should know at start."""
        from models.activation import active_version

        spec = self.model_spec
        try:
            with self.sessions() as session:
                active = active_version(session)
        except SQLAlchemyError:  # advice only: not reachable or not migrated yet
            return None
        if active is None or active.sha256 == spec.sha256:
            return None
        return (f"MAMMO_MODEL makes this worker run {spec.name} {spec.version}, while the "
                f"activated model is {active.name} {active.version}: exams whose views "
                "reach workers of both get scores of two models (and are flagged so)")

    @property
    def shown_database(self) -> str:
        """The database URL as a person may see it: password masked, SQLite resolved."""
        return _shown_database(self.settings.database_url)

    @property
    def worker_name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def warm_up(self, **_signal: Any) -> None:
        """Load everything now (``worker_process_init``), so the first chunk is not slow.

        The decoder processes start first: they come from a fresh forkserver, never from a
        process that has loaded TensorFlow.
        """
        started = time.monotonic()
        self.decoder.start()
        self.require_model()
        log_start_time(time.monotonic() - started, self.settings.worker_start_timeout_s)

    def close(self, **_signal: Any) -> None:
        """Stop this process's decoder pool and notification senders (worker child exit,
        embedded worker stop)."""
        if self._decoder is not None and self._pid == os.getpid():
            self._decoder.close()
        self._decoder = None
        if self._notifier is not None and self._pid == os.getpid():
            self._notifier.close()  # waits for deliveries in hand, says what it leaves
        self._notifier = None
        self._closed = True


_PRIVATE_PREFIX = "mammo-model-"


def _in_memory(data: bytes) -> int | None:
    """A file descriptor of an anonymous memory file holding ``data`` (Linux), or None."""
    create = getattr(os, "memfd_create", None)
    if create is None or not Path(f"/proc/{os.getpid()}/fd").is_dir():
        return None
    try:
        fd: int = create("mammo-model.keras")
    except OSError:  # not allowed here (a sandbox): a file in the temporary folder instead
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_stale_copies() -> None:
    """Remove private copies left by worker processes that died while loading (SIGKILL):
    those folders name their process."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid = folder.name[len(_PRIVATE_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # alive, another user's


def log_start_time(seconds: float, limit_s: int) -> None:
    """Say how long this child took to start, against the limit Celery kills it at.

    Celery's own message comes only once it has killed the child ("Timed out waiting for
    UP message"), and then again for every replacement: a start over half the limit is
    the warning before that happens.
    """
    close = seconds > limit_s / 2
    log.log(logging.WARNING if close else logging.INFO,
            "worker child %d started (decoders and model loaded) in %.0f s; "
            "MAMMO_WORKER_START_TIMEOUT_S is %d s%s", os.getpid(), seconds, limit_s,
            ": raise it, or a replacement child that loads slower is killed in a loop"
            if close else "")


def _shown_database(url: str) -> str:
    shown, parsed = redact_url(url), make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        # A relative SQLite path depends on the working directory: show where it lands.
        shown += f" = {Path(database).resolve()}"
    return shown
