"""Submit files: register rows (committed), then send the wake-up messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from producer.discovery import OwnFiles, check_paths, iter_files
from producer.registration import NewBatch, create_batch, ingestion_for, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.enums import Priority
from shared.errors import BrokerUnavailableError
from shared.notify import Notifier
from shared.queue import enqueue_chunks
from shared.recovery import leave_to_sweeper


@dataclass
class SubmitOutcome:
    batch_id: int
    queued: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    # Of ``queued``: images read before with inferred metadata (their file name, or none)
    # that this submission's manifest rows corrected, to be scored again: id -> what changed.
    reregistered: dict[int, str] = field(default_factory=dict)
    messages: int = 0
    # Found in a folder but not read: (path, why), e.g. a link out of the folder.
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def waiting_on(self) -> list[int]:
        return self.queued + self.requeued

    @property
    def files(self) -> int:
        return len(self.queued) + len(self.rejected) + len(self.duplicates)


def submit(
    settings: Settings, sessions: sessionmaker[Session], app: Celery, paths: Sequence[Path], *,
    name: str | None = None, priority: Priority = Priority.ROUTINE, mode: str = "distributed",
    requeue_unfinished_duplicates: bool = False, on_file: Callable[[Path], None] | None = None,
    manifest: Path | None = None,
) -> SubmitOutcome:
    """Queue every file under ``paths`` as one batch.

    ``manifest`` is a CSV of metadata for files that carry none (``producer/manifest.py``).

    ``requeue_unfinished_duplicates`` is for the embedded queue: it starts empty, so an image
    a previous interrupted run left ``queued`` has no message anywhere and needs a new one.
    """
    check_paths(paths)
    ingestion = ingestion_for(settings, manifest)  # a bad manifest fails before any batch
    skipped: list[tuple[Path, str]] = []
    files = iter_files(paths, own=OwnFiles.of(settings),
                       on_skip=lambda path, why: skipped.append((path, why)))
    # The batch is committed with its first block of files, never before: made first, a
    # submit killed (SIGKILL, OOM, a lost host) while it walked the folders or read the
    # first headers (a slow share, minutes behind a table lock) left an empty batch that
    # `mammo status` listed as in progress for ever; an error then discarded it, a kill
    # could not. A registration that fails before its first block leaves no batch either.
    reg = register_files(sessions, NewBatch(name, priority, mode), files, on_file=on_file,
                         ingestion=ingestion)
    # No file registered (those found were gone by now): a batch with nothing in it,
    # finished as it is made, so that the command still names one.
    batch_id = reg.batch_id if reg.batch_id is not None else create_batch(
        sessions, name=name, priority=priority, mode=mode, finished=True)
    outcome = SubmitOutcome(batch_id, reg.new_ids, reg.rejected_ids, reg.duplicates,
                            reregistered=reg.reregistered, skipped=skipped)
    if requeue_unfinished_duplicates:
        outcome.requeued = reg.unfinished_duplicate_ids
    else:
        # A copy of a still-queued image, sent at a higher priority than the image's own
        # batch (a routine night batch, resubmitted as urgent): send it again at this one.
        # And a copy of an image a broken-off submit registered but never sent.
        known = [image_id for _, image_id, _ in reg.duplicates]
        with sessions() as session:
            outcome.requeued = sorted(set(lifecycle.outranked(session, known, priority))
                                      | set(lifecycle.never_sent(session, known)))
    to_send = outcome.waiting_on
    # Row first, message second: if sending fails the rows stay queued, owed a message.
    try:
        outcome.messages = enqueue_chunks(app, to_send, chunk_size=settings.chunk_size,
                                          priority=priority)
    except BaseException as exc:
        # This submit sends nothing more (the broker away mid-send, an interrupt): leave
        # every image it was sending to the next sweep, which sends those still queued
        # whatever the broker holds and `mammo status` counts as owed. Left as registered,
        # they looked to every sweep like images whose sender was still at work: they
        # waited MAMMO_REQUEUE_AFTER_S, an urgent batch's too. Which chunks went out is not
        # known here; an image sent twice is claimed once, so the second message is a no-op.
        leave_to_sweeper(sessions, to_send)
        if not isinstance(exc, BrokerUnavailableError):
            raise
        raise BrokerUnavailableError(
            f"{exc} Batch {batch_id} is registered: its {len(to_send)} image(s) wait in the "
            "database, and a worker's sweeper sends them at its next pass once the broker is "
            f"back; so do `mammo recover --batch {batch_id}` and submitting the same files "
            "again.") from exc
    with sessions() as session:
        lifecycle.mark_enqueued(session, to_send)
        finished = lifecycle.finish_batches(session, [batch_id])
        session.commit()
    # Stamped here only when nothing was left to process (every file refused at intake, or
    # copies of images already finished): a copy's original still queued keeps it open.
    # An empty batch, made finished, is announced here too.
    Notifier(settings, sessions).batches_finished(
        finished if reg.batch_id is not None else [batch_id])
    return outcome
