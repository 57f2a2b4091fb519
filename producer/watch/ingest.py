"""Register ready files and send their wake-up messages: one log line per file.

It reuses the producer's registration (rows committed first, identity makes duplicates a
no-op) and ``enqueue_chunks``; only the bookkeeping of the watcher's batch is its own.

The batch: one per watched folder per site day (the database's clock, read on the site's
calendar, MAMMO_SITE_TIMEZONE), named ``watch:<folder>:<YYYY-MM-DD>``, found again by name
after a restart, so a day's drop-folder work reads as one batch in ``mammo status`` and the
reports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from pathlib import Path

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import NewBatch, create_batch, ingestion_for, register_files
from producer.watch.folder import WatchFolder
from shared.batches import watch_batch_name
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.schema import Batch, Image
from shared.enums import Priority
from shared.formatting import without_control
from shared.queue import enqueue_chunks
from shared.recovery import leave_to_sweeper
from shared.timeutil import site_day


@dataclass
class Ingested:
    queued: dict[int, Path] = field(default_factory=dict)
    rejected: dict[int, Path] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, str]] = field(default_factory=list)
    messages: int = 0


class Ingestor:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], app: Celery,
                 folder: WatchFolder, log: logging.Logger, *, mode: str) -> None:
        self.settings = settings
        self.sessions = sessions
        self.app = app
        self.folder = folder
        self.log = log
        self.mode = mode
        # The PatientID pseudonymizer (MAMMO_PATIENT_ID_KEY): as `mammo submit` reads files.
        self.ingestion = ingestion_for(settings)
        self._batch: tuple[str, int] | None = None

    def batch_id(self) -> int:
        """Today's batch, made (empty) if there is none yet: for a caller that needs its id
        before any file (``ingest`` makes it with its first files, ``day_batch``)."""
        batch = self.day_batch()
        if isinstance(batch, int):
            return batch
        self._batch = (str(batch.name), create_batch(
            self.sessions, name=batch.name, priority=batch.priority, mode=batch.mode))
        return self._batch[1]

    def day_batch(self) -> int | NewBatch:
        """Today's batch: its id, or the one to make with the first files registered to it
        (``register_files``), so that a watcher killed before registering any leaves no
        empty batch "in progress"."""
        with self.sessions() as session:
            # The database's day: a day batch's summary is due once its day is over by that
            # clock (``summary_due_at``). By a watcher's clock running behind, the first files
            # of a new day joined the batch of the day before, summarised without them.
            # The site's day, not UTC's: cut at UTC midnight, a Sydney site's morning exam
            # (views at 10:58 and 11:00) was split over two batches.
            day = site_day(database_now(session), self.settings.site_zone)
        name = watch_batch_name(self.folder.root, day)
        if self._batch is None or self._batch[0] != name:
            with self.sessions() as session:
                found = session.execute(select(Batch.id).where(Batch.name == name)
                                        .order_by(Batch.id).limit(1)).scalar_one_or_none()
            if found is None:
                return NewBatch(name, Priority.ROUTINE, self.mode, join_named=True)
            self._batch = (name, found)
        return self._batch[1]

    def ingest(self, paths: Sequence[Path], *, changed: Set[Path] = frozenset()) -> Ingested:
        """Register ``paths`` (committed), then enqueue the new ones. Logs each file.

        ``changed``: those of them seen written to since their image failed."""
        out = Ingested()
        if not paths:
            return out
        batch = self.day_batch()
        # register_files adds this call's files to the batch's counts (an atomic increment:
        # a second watcher on the folder may be adding its own at the same moment).
        ingestion = replace(self.ingestion, changed=frozenset(changed & set(paths)))
        reg = register_files(self.sessions, batch, paths, ingestion=ingestion)
        if reg.batch_id is None:  # nothing registered: no batch was made
            return out
        if isinstance(batch, NewBatch):
            self._batch = (str(batch.name), reg.batch_id)
        batch_id = reg.batch_id
        self._reopen(batch_id)
        sources = self._sources(reg.new_ids + reg.rejected_ids)
        out.queued = {i: sources[i][0] for i in reg.new_ids}
        out.rejected = {i: sources[i][0] for i in reg.rejected_ids}
        out.duplicates = [(Path(src), image_id, state) for src, image_id, state in reg.duplicates]
        # Row first, message second: a crash in between leaves rows the next start-up sends.
        self.send(list(out.queued))
        out.messages = len(out.queued)
        for image_id, path in out.queued.items():
            if image_id in reg.retried:
                self.log.info("queued %s (image %d) again: it had failed (%s)",
                              self.folder.relative(path), image_id, reg.retried[image_id])
            else:
                self.log.info("queued %s (image %d)", self.folder.relative(path), image_id)
        for image_id, path in out.rejected.items():
            code, message = sources[image_id][1:]
            self.log.warning("rejected %s (image %d): %s: %s", self.folder.relative(path),
                             image_id, code, without_control(str(message), one_line=True))
        for path, image_id, state in out.duplicates:
            self.log.info("skipped duplicate %s: same image as image %d (%s)",
                          self.folder.relative(path), image_id, state)
        return out

    def resend(self, images: Mapping[int, tuple[Path, str]]) -> None:
        """Send images registered earlier (``image id -> (path, why)``) and log each one."""
        self.send(list(images))
        for image_id, (path, why) in images.items():
            self.log.info("queued %s (image %d): %s", self.folder.relative(path), image_id, why)

    def send(self, image_ids: list[int]) -> int:
        """Send the messages of ``image_ids`` (registered, committed) and stamp them sent.

        A send that fails or is cut off (the broker away, Redis killed mid-block) leaves
        every image it was sending to the next sweep (``leave_to_sweeper``, as `mammo
        submit` and ``recovery.requeue`` do), then raises: the watch loop waits out the
        outage and its next scan sends them again itself. Left registered and unstamped,
        they looked to every sweep like images whose sender was still at work: none sent
        them before MAMMO_REQUEUE_AFTER_S (600 s), whether or not this watcher lived to
        try again, and `mammo status --health` counted them neither owed nor lost. Which
        chunks went out is not known here; an image sent twice is claimed once, so a
        second message is a no-op, and the marker counts only until a send is stamped
        (``mark_enqueued``), the watcher's or the sweeper's.
        """
        if not image_ids:
            return 0
        try:
            sent = enqueue_chunks(self.app, image_ids, chunk_size=self.settings.chunk_size,
                                  priority=Priority.ROUTINE)
        except BaseException as exc:
            leave_to_sweeper(self.sessions, image_ids)
            self.log.warning("%d image(s) registered but not sent (%s): left to a worker's "
                             "sweeper, which sends them at its next pass once the broker is "
                             "back; this watcher sends them again at its next scan too",
                             len(image_ids), type(exc).__name__)
            raise
        with self.sessions() as session:
            lifecycle.mark_enqueued(session, image_ids)
            session.commit()
        return sent

    def _sources(self, ids: list[int]) -> dict[int, tuple[Path, str | None, str | None]]:
        if not ids:
            return {}
        with self.sessions() as session:
            rows = session.execute(select(Image.id, Image.source, Image.error_code,
                                          Image.error_message).where(Image.id.in_(ids)))
            return {i: (Path(src), code, msg) for i, src, code, msg in rows}

    def _reopen(self, batch_id: int) -> None:
        """The day's batch grows over many registrations: new files make it open again."""
        with self.sessions() as session:
            session.execute(update(Batch).where(Batch.id == batch_id).values(finished_at=None))
            session.commit()
