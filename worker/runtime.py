"""Per-process resources of a worker: database engine, classifier, decoder pool, model row.

Built lazily and keyed by PID: a prefork child never reuses its parent's connections or
TensorFlow state, which is what makes fork safe here.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.activation import model_for, register
from models.registry import ModelSpec
from shared.config import Settings
from shared.db.engine import create_db_engine, make_session_factory
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.notify import Notifier
from shared.urls import redact_url
from worker.classifier import Classifier
from worker.decoding import ChunkDecoder

log = logging.getLogger(__name__)


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
        self._closed = False
        self._decoder = None  # an inherited decoder pool is the parent's: start our own

    @property
    def sessions(self) -> sessionmaker[Session]:
        self._own_process()
        if self._sessions is None:
            self._engine = create_db_engine(self.settings)
            self._sessions = make_session_factory(self._engine)
        return self._sessions

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

    @property
    def classifier(self) -> Classifier:
        self._own_process()
        if self._classifier is None:
            classifier = Classifier(
                self.model_spec, batch_size=self.settings.chunk_size,
                preprocessing_version=PREPROCESSING_VERSION,
                intra_op_threads=self.settings.tf_intra_op_threads,
                inter_op_threads=self.settings.tf_inter_op_threads,
                micro_batch=self.settings.micro_batch,
            )
            classifier.load()
            self._classifier = classifier
        return self._classifier

    @property
    def decoder(self) -> ChunkDecoder:
        self._own_process()
        if self._decoder is None:
            self._decoder = ChunkDecoder(self.settings.decode_processes)
        return self._decoder

    @property
    def model_version_id(self) -> int:
        if self._model_version_id is None:
            with self.sessions() as session:
                self._model_version_id = register(session, self.classifier.spec)
                session.commit()
        return self._model_version_id

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
        self.model_version_id  # noqa: B018 - the property loads the model and registers it
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
