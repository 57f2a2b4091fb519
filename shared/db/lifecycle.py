"""Image state transitions: queued -> processing -> done | failed.

Every transition is one conditional UPDATE, so two workers (or one message delivered twice)
can never both own an image: the database decides who wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db.clock import database_now
from shared.db.schema import Batch, DuplicateSubmission, Image, Notification
from shared.enums import ErrorCode, ImageState, Priority
from shared.imaging.header_bounds import storable
from shared.timeutil import as_utc

ACTIVE_STATES = (ImageState.QUEUED.value, ImageState.PROCESSING.value)
_ID_BLOCK = 500  # ids per IN list: well under every database's bound-parameter limit
# The claim token of a queued image whose sender gave up on its message (``owe_message``):
# the sweeper's to send, at its next pass. A worker's token is its task's id, never this.
LEFT_TO_SWEEPER = "left-to-sweeper"


def in_blocks(ids: Iterable[int], size: int = _ID_BLOCK) -> Iterator[list[int]]:
    """``ids`` once each, in id order, ``size`` at a time: one IN list each. PostgreSQL
    takes at most 65,535 bound parameters a statement, and a night's queue (or a submit of
    a whole archive) holds more images than that."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


@dataclass(frozen=True)
class ClaimedImage:
    id: int
    batch_id: int
    source: str
    attempts: int
    laterality: str | None = None
    view: str | None = None
    spacing_row_mm: float | None = None
    spacing_column_mm: float | None = None
    identity: str | None = None  # as registered: the file at ``source`` must still have it
    archived_path: str | None = None  # where the watcher moved it, once done (a re-score)

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """Spacing recorded at intake (a manifest, for formats that carry none)."""
        if self.spacing_row_mm and self.spacing_column_mm:
            return (self.spacing_row_mm, self.spacing_column_mm)
        return None


def claim(
    session: Session, image_ids: Sequence[int], *, token: str, lease_s: int,
) -> list[ClaimedImage]:
    """Take ownership of the images that nobody else holds; return those taken.

    An image is claimable when it is queued, when this same task id held it before (the
    message was redelivered after its worker died, or retried), or when its previous lease
    expired. Each claim counts an attempt, so a poison input cannot loop for ever. The
    lease is stamped and judged on the database's clock (``database_now``).
    """
    now = database_now(session)
    stale = now - timedelta(seconds=lease_s)
    processing = Image.state == ImageState.PROCESSING.value
    stmt = (
        update(Image)
        .where(Image.id.in_(list(image_ids)))
        .where(or_(
            Image.state == ImageState.QUEUED.value,
            and_(processing, Image.claim_token == token),
            and_(processing, Image.claimed_at < stale),
        ))
        .values(
            state=ImageState.PROCESSING.value, attempts=Image.attempts + 1,
            claim_token=token, claimed_at=now,
        )
        .returning(Image.id, Image.batch_id, Image.source, Image.attempts, Image.laterality,
                   Image.view, Image.spacing_row_mm, Image.spacing_column_mm, Image.identity,
                   Image.archived_path)
    )
    rows = session.execute(stmt, execution_options={"synchronize_session": False}).all()
    session.commit()
    return sorted((ClaimedImage(**row._mapping) for row in rows), key=lambda c: c.id)


def renew(session: Session, token: str) -> int:
    """Stamp the claims ``token`` still holds as fresh (the worker's heartbeat); return how
    many it holds. Stamped on the database's clock, the one every judge of the lease reads."""
    now = database_now(session)
    renewed = session.execute(
        update(Image).where(Image.claim_token == token,
                            Image.state == ImageState.PROCESSING.value)
        .values(claimed_at=now).returning(Image.id),
        execution_options={"synchronize_session": False},
    ).scalars().all()
    session.commit()
    return len(renewed)


def _held_by(token: str | None) -> list[ColumnElement[bool]]:
    """The fence on a worker's write: the image is still processing under its claim. A
    worker whose lease expired while it was stalled (and whose images another worker took
    over) must not overwrite the other's result or flip done to failed."""
    if token is None:
        return []
    return [Image.claim_token == token, Image.state == ImageState.PROCESSING.value]


def mark_done(session: Session, image_ids: Sequence[int], *, token: str | None = None,
              now: datetime | None = None) -> list[int]:
    """Mark images done; with ``token``, only those its claim still holds. Returns the ids
    marked. The finish is stamped on the database's clock, as claims are: `mammo status`
    judges "being worked on" by both (``queries._in_progress``); ``now``, when the caller
    already read it (``database_now``) for the same save."""
    if not image_ids:
        return []
    rows = session.execute(
        update(Image).where(Image.id.in_(list(image_ids)), *_held_by(token)).values(
            state=ImageState.DONE.value, error_code=None, error_message=None,
            finished_at=now or database_now(session),
        ).returning(Image.id),
        execution_options={"synchronize_session": False},
    ).scalars().all()
    return sorted(rows)


def mark_failed(session: Session, image_id: int, code: ErrorCode, message: str, *,
                token: str | None = None, now: datetime | None = None) -> bool:
    """Mark an image failed; with ``token``, only if its claim still holds it. The failure's
    time is the database's: a resubmitted file is retried when written since (judged by
    registration on that clock)."""
    row = session.execute(
        update(Image).where(Image.id == image_id, *_held_by(token)).values(
            state=ImageState.FAILED.value, error_code=code.value,
            # A worker's message can quote a header value, and PostgreSQL stores no NUL.
            error_message=storable(message)[:2000], finished_at=now or database_now(session),
        ).returning(Image.id),
        execution_options={"synchronize_session": False},
    ).first()
    return row is not None


def release(session: Session, image_ids: Sequence[int], token: str, *,
            refund: bool = True) -> list[int]:
    """Give images this claim still holds back to the queue, owed a message; return their ids.

    ``refund`` takes back the attempt the claim counted (nothing went wrong with the image:
    e.g. the database blipped). Without it the attempt stays counted (e.g. a time-out).
    The caller sends their message (``requeue``, or the chunk's retry): until then they are
    owed one (``back_in_queue``).
    """
    attempts = Image.attempts - 1 if refund else Image.attempts
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(list(image_ids)), Image.claim_token == token,
               Image.state == ImageState.PROCESSING.value)
        .values(attempts=attempts, **back_in_queue(session))
        .returning(Image.id),
        execution_options={"synchronize_session": False},
    ).scalars().all()
    session.commit()
    return sorted(rows)


def refund(session: Session, image_ids: Sequence[int], token: str) -> list[int]:
    """Take back the attempt the claims ``token`` holds counted, keeping the claims; return
    the ids refunded.

    For a chunk about to run its images one at a time (each claimed again, and charged
    again, by the same token): unlike ``release``, the images stay claimed, renewed by the
    chunk's heartbeat. A worker killed during that pass leaves them under a lease that
    expires, which the sweeper re-sends within minutes; queued, they had no message (it
    sat unacknowledged with the dead worker) until the long-queued rule caught them.
    """
    rows = session.execute(
        update(Image).where(Image.id.in_(list(image_ids)), *_held_by(token))
        .values(attempts=Image.attempts - 1).returning(Image.id),
        execution_options={"synchronize_session": False},
    ).scalars().all()
    session.commit()
    return sorted(rows)


def release_expired(session: Session, image_ids: Sequence[int], *,
                    claimed_before: datetime) -> list[int]:
    """Give back to the queue the images among ``image_ids`` whose claim is older than
    ``claimed_before`` (their holder stopped: a killed worker or run); return their ids.
    ``claimed_before`` is a time on the database's clock (``database_now``), which claims
    are stamped on.

    For whoever re-sends them (the sweeper): a dead claim left in place was found, and
    re-sent, by every sweep until a worker took it, each a message more in the broker.
    Queued, they are owed a message until it is sent (``back_in_queue``), then follow the
    queued rules from it on. The attempts stay
    counted: a poison image that kills whole workers still reaches its quarantine. The
    condition is checked in the same UPDATE, so a claim taken or renewed since (a live
    worker) is left alone; a holder that was only held up finds its claim gone, and its
    saves write nothing (``_held_by``).
    """
    released: list[int] = []
    queued = back_in_queue(session)
    for block in in_blocks(image_ids):
        released += session.execute(
            update(Image).where(Image.id.in_(block),
                                Image.state == ImageState.PROCESSING.value,
                                Image.claimed_at < claimed_before)
            .values(**queued)
            .returning(Image.id),
            execution_options={"synchronize_session": False}).scalars().all()
    session.commit()
    return sorted(released)


def finish_batches(session: Session, batch_ids: Sequence[int]) -> list[int]:
    """Stamp ``finished_at`` on batches that have no active image left; return those stamped.

    A batch's images include the originals of the files it sent again (duplicates): a batch
    that resubmitted a still-queued image is not finished before that image is.

    The conditional UPDATE stamps each batch once, so exactly one caller learns that it
    finished (and sends its notification). Call it in a transaction of its own, after the
    images' states were committed: inside the transaction that marks them, two workers
    finishing a batch's last images at once each still see the other's images as active
    (write skew under READ COMMITTED), and neither would stamp the batch.
    """
    if not batch_ids:
        return []
    return _stamp_finished(session, Batch.id.in_(list(set(batch_ids))))


def finish_open_batches(session: Session) -> list[int]:
    """Stamp every open batch whose images are all done or failed: the sweeper's safety net
    for a process that died between saving a batch's last images and stamping the batch."""
    has_images = or_(exists().where(Image.batch_id == Batch.id),
                     exists().where(DuplicateSubmission.batch_id == Batch.id))
    return _stamp_finished(session, has_images)


# How old an open batch with no file must be before the sweeper deletes it. This release
# commits a batch with its first block of files (``producer.registration.NewBatch``), so
# none of its own stays empty; an earlier release's `mammo submit` or `mammo watch` made
# the batch first, and one killed before its first block left it empty and open for ever.
# A day is far longer than such a process takes to walk a folder and read 500 headers,
# even on a slow share or behind a table lock: its first block, still to come in a rolling
# upgrade, would find its batch gone.
EMPTY_BATCH_GRACE_S = 24 * 3600


def discard_empty_batches(session: Session, *,
                          grace_s: float = EMPTY_BATCH_GRACE_S) -> list[int]:
    """Delete the open batches made more than ``grace_s`` ago (the database's clock) that
    hold no file, no copy and no notification; return their ids. `mammo status ID` then
    says there is no such batch, as for a submit whose registration failed at its start."""
    cutoff = database_now(session) - timedelta(seconds=grace_s)
    empty = ~or_(exists().where(Image.batch_id == Batch.id),
                 exists().where(DuplicateSubmission.batch_id == Batch.id),
                 exists().where(Notification.batch_id == Batch.id))
    return sorted(session.execute(
        delete(Batch).where(Batch.finished_at.is_(None), Batch.created_at < cutoff, empty)
        .returning(Batch.id),
        execution_options={"synchronize_session": False}).scalars())


def _stamp_finished(session: Session, which: ColumnElement[bool]) -> list[int]:
    active = or_(
        exists().where(Image.batch_id == Batch.id, Image.state.in_(ACTIVE_STATES)),
        exists().where(DuplicateSubmission.batch_id == Batch.id,
                       DuplicateSubmission.image_id == Image.id,
                       Image.state.in_(ACTIVE_STATES)),
    )
    stamped = session.execute(
        update(Batch)
        .where(which, Batch.finished_at.is_(None), ~active)
        # The database's clock, which a summary's due time is judged on (``notify.dispatch``):
        # stamped on a worker's running ahead, the batch looked finished in the future and
        # its summary was skipped as not yet due until a later sweep.
        .values(finished_at=database_now(session))
        .returning(Batch.id),
        execution_options={"synchronize_session": False},
    ).scalars().all()
    return sorted(stamped)


def back_in_queue(session: Session) -> dict[str, Any]:
    """The values that put an image back in the queue, owed a message that its caller sends.

    No send time until the message is sent (``mark_enqueued``): a send that fails leaves
    the image owed one, which the sweeper sends whatever the broker holds (a send time
    stamped first made it look sent, and it waited for an empty queue behind a night's
    routine work). ``requeued_at`` (the database's clock, which ``stale_images`` judges on)
    holds the sweeper off while its caller is about to send, as ``created_at`` does after
    a registration.
    """
    return {"state": ImageState.QUEUED.value, "claim_token": None, "claimed_at": None,
            "enqueued_at": None, "requeued_at": database_now(session)}


def owe_message(session: Session, image_ids: Sequence[int]) -> list[int]:
    """Record that no process is about to send the still-queued images among ``image_ids``
    their message (a send that failed, a chunk that gave up its retries); return their ids.

    They are left to the sweeper (``LEFT_TO_SWEEPER``): its next pass sends them, whatever
    the broker holds and however recently they were queued, rather than leave them to a
    sender that has given up. Their queuing time stays: `mammo status` counts their wait
    from it (``waiting_since``), not from a registration days before a re-score.
    """
    owed: list[int] = []
    for block in in_blocks(image_ids):
        owed += session.execute(
            update(Image).where(Image.id.in_(block), Image.state == ImageState.QUEUED.value)
            .values(enqueued_at=None, claim_token=LEFT_TO_SWEEPER).returning(Image.id),
            execution_options={"synchronize_session": False}).scalars().all()
    return sorted(owed)


def mark_enqueued(session: Session, image_ids: Sequence[int], when: datetime | None = None,
                  *, owed_only: bool = False) -> None:
    """Stamp the images sent, by default now on the database's clock: the sweeper that
    judges them long queued may run on another host (``stale_images``). With
    ``owed_only``, only those owed a message (a chunk's retry: its images handed back)."""
    if not image_ids:
        return
    owed = [Image.enqueued_at.is_(None)] if owed_only else []
    sent = when or database_now(session)
    for block in in_blocks(image_ids):
        session.execute(update(Image).where(Image.id.in_(block), *owed).values(enqueued_at=sent),
                        execution_options={"synchronize_session": False})


def waiting_since() -> ColumnElement[datetime]:
    """Since when a queued image has waited: its message's send time, or, while it is owed
    one (no send time), since it was last put back in the queue (``back_in_queue``) or
    registered, whichever came later (a retried failure is registered anew: its
    ``created_at`` is reset, and a ``requeued_at`` of an earlier hand-back stays). A send
    that failed (``owe_message``) keeps that time: the image has waited since, not since
    a registration days before a re-score."""
    queued = case((Image.requeued_at > Image.created_at, Image.requeued_at),
                  else_=Image.created_at)  # a NULL requeued_at compares as unknown
    return func.coalesce(Image.enqueued_at, queued)


def _left_to_sweeper() -> ColumnElement[bool]:
    """Owed a message its sender gave up on (``owe_message``); never NULL, so its negation
    holds for every other row."""
    return and_(Image.enqueued_at.is_(None),
                func.coalesce(Image.claim_token, "") == LEFT_TO_SWEEPER)


class StaleImage(NamedTuple):
    id: int
    claimed: bool  # processing under a claim whose lease passed; otherwise queued
    owed: bool  # queued with no message sent since it was queued (``never_sent``)
    sent_at: datetime | None = None  # its message's send time (``enqueued_at``), if any


def find_stale(
    session: Session, *, queued_before: datetime, claimed_before: datetime,
    owed_before: datetime | None = None, batch_id: int | None = None,
) -> list[StaleImage]:
    """Images whose wake-up message may be lost, in id order: queued long ago, or claimed by
    a dead worker; each with its state, from this one query (a night's queue can hold more
    ids than PostgreSQL takes in one IN list: ``in_blocks``).

    A queued image whose message was sent counts from the send, against ``queued_before``.
    One owed a message counts from when it was queued (``waiting_since``), against
    ``owed_before`` (by default ``queued_before``): a producer between its commit and its
    send (a watcher's block, a long submit, a re-score, a chunk's retry) has not lost
    anything yet, and a worker's sweep in that gap re-sent the images with a warning that
    they were lost. One whose sender gave up (``owe_message``) is stale at once.

    Every cutoff is a time on the database's clock (``database_now``): claims, send times
    and registrations are stamped on it."""
    queued = Image.state == ImageState.QUEUED.value
    processing = Image.state == ImageState.PROCESSING.value
    owed = and_(queued, Image.enqueued_at.is_(None))
    stmt = select(Image.id, processing, owed, Image.enqueued_at).where(or_(
        and_(queued, Image.enqueued_at < queued_before),
        and_(owed, or_(_left_to_sweeper(), waiting_since() < (owed_before or queued_before))),
        and_(processing, Image.claimed_at < claimed_before),
    ))
    if batch_id is not None:
        stmt = stmt.where(Image.batch_id == batch_id)
    return [StaleImage(image_id, bool(claimed), bool(never), as_utc(sent))
            for image_id, claimed, never, sent in session.execute(stmt.order_by(Image.id))]


def stale_images(
    session: Session, *, queued_before: datetime, claimed_before: datetime,
    batch_id: int | None = None,
) -> list[int]:
    """The ids of ``find_stale``."""
    return [image.id for image in find_stale(session, queued_before=queued_before,
                                             claimed_before=claimed_before, batch_id=batch_id)]


def queued_since(session: Session, since: datetime, *, batch_id: int | None = None) -> int:
    """How many images have been queued only since ``since`` (sent then, or queued then
    and not sent yet): those ``stale_images`` with ``queued_before=since`` leaves alone."""
    stmt = select(func.count()).select_from(Image).where(
        Image.state == ImageState.QUEUED.value, waiting_since() >= since, ~_left_to_sweeper())
    if batch_id is not None:
        stmt = stmt.where(Image.batch_id == batch_id)
    return int(session.scalar(stmt) or 0)


def batch_ids_of(session: Session, image_ids: Sequence[int]) -> list[int]:
    """The batches ``image_ids`` belong to, and those that sent any of them again (each
    waits for its duplicates' originals: ``finish_batches``)."""
    if not image_ids:
        return []
    ids = list(image_ids)
    stmt = (select(Image.batch_id).where(Image.id.in_(ids))
            .union(select(DuplicateSubmission.batch_id)
                   .where(DuplicateSubmission.image_id.in_(ids))))
    return sorted(session.execute(stmt).scalars())


def _priority(value: str | None) -> Priority:
    try:
        return Priority(value or Priority.ROUTINE.value)
    except ValueError:
        return Priority.ROUTINE


def _more_urgent(a: Priority, b: Priority) -> Priority:
    return a if a.broker_priority <= b.broker_priority else b


def priorities_of(session: Session, image_ids: Sequence[int]) -> dict[int, Priority]:
    """Each image's priority: its batch's, raised by any batch that sent a copy of it.

    A file resubmitted as urgent while its image still waits in a routine batch makes that
    image urgent (``producer.submission``); a re-sent message (the sweeper, ``mammo
    recover``) keeps it so. An id without a row is routine.
    """
    found: dict[int, Priority] = {}
    for block in in_blocks(image_ids):
        own = (select(Image.id, Batch.priority).join(Batch, Batch.id == Image.batch_id)
               .where(Image.id.in_(block)))
        copies = (select(DuplicateSubmission.image_id, Batch.priority)
                  .join(Batch, Batch.id == DuplicateSubmission.batch_id)
                  .where(DuplicateSubmission.image_id.in_(block)))
        for image_id, value in [*session.execute(own), *session.execute(copies)]:
            wanted = _priority(value)
            found[image_id] = _more_urgent(found.get(image_id, wanted), wanted)
    return {image_id: found.get(image_id, Priority.ROUTINE) for image_id in image_ids}


def urgent_studies(session: Session, study_ids: Sequence[int]) -> set[int]:
    """The studies among ``study_ids`` with an urgent image (``priorities_of``'s rule: its
    batch, or a batch that sent a copy of it, was submitted urgent). An exam sent urgent
    keeps saying so in the worklist and its alert after it is scored: once read first by
    its score, a reader still needs to know someone asked for it to be read at once."""
    urgent = Priority.URGENT.value
    found: set[int] = set()
    for block in in_blocks(study_ids):
        # The range repeats the ids for PostgreSQL without statistics (a restored database),
        # which planned 500 ids as a scan of every image (shared.reports.worklist's
        # _EXAM_VIEWS says why); a range is planned on ix_images_study_id.
        studies = and_(Image.study_id.in_(block),
                       Image.study_id.between(min(block), max(block)))
        own = (select(Image.study_id).join(Batch, Batch.id == Image.batch_id)
               .where(studies, Batch.priority == urgent))
        copies = (select(Image.study_id)
                  .join(DuplicateSubmission, DuplicateSubmission.image_id == Image.id)
                  .join(Batch, Batch.id == DuplicateSubmission.batch_id)
                  .where(studies, Batch.priority == urgent))
        found.update(study_id for study_id in session.execute(own.union(copies)).scalars()
                     if study_id is not None)
    return found


def study_priority(session: Session, study_id: int) -> Priority:
    """One exam's priority by ``urgent_studies``'s rule (its PDF, its alert)."""
    return Priority.URGENT if urgent_studies(session, [study_id]) else Priority.ROUTINE


def by_priority(session: Session, image_ids: Iterable[int]) -> dict[Priority, list[int]]:
    """``image_ids`` grouped by ``priorities_of``, each group in id order."""
    groups: dict[Priority, list[int]] = {}
    for image_id, priority in priorities_of(session, sorted(set(image_ids))).items():
        groups.setdefault(priority, []).append(image_id)
    return groups


def outranked(session: Session, image_ids: Sequence[int], priority: Priority) -> list[int]:
    """The still-queued images among ``image_ids`` whose own batch is less urgent than
    ``priority``: a duplicate submitted at ``priority`` re-sends them at it. A second message
    is harmless: ``claim`` takes an image only while it is queued (or under its own or an
    expired claim), so whichever message comes first processes it and the other finds
    nothing to claim."""
    found: list[int] = []
    for block in in_blocks(image_ids):
        rows = session.execute(
            select(Image.id, Batch.priority).join(Batch, Batch.id == Image.batch_id)
            .where(Image.id.in_(block), Image.state == ImageState.QUEUED.value))
        found += [image_id for image_id, value in rows
                  if priority.broker_priority < _priority(value).broker_priority]
    return sorted(found)


def never_sent(session: Session, image_ids: Sequence[int]) -> list[int]:
    """The still-queued images among ``image_ids`` owed a message (no send time): rows are
    committed before messages, so a broker lost mid-submit leaves them so, and so does a
    re-send that failed (``back_in_queue``). A resubmission of the same files sends them
    (a second message is harmless, see ``outranked``), and so does the sweeper."""
    found: list[int] = []
    for block in in_blocks(image_ids):
        found += session.execute(select(Image.id).where(
            Image.id.in_(block), Image.state == ImageState.QUEUED.value,
            Image.enqueued_at.is_(None))).scalars().all()
    return sorted(found)


def reopen(session: Session, image_ids: Sequence[int]) -> list[int]:
    """Put done images back in the queue to be scored by another model version (``mammo
    rescore``), owed the message the caller sends next (``back_in_queue``); return those
    reopened. Their earlier predictions stay: predictions are one per image per model
    version, and the newest is the one reports read."""
    reopened: list[int] = []
    queued = back_in_queue(session)
    for block in in_blocks(image_ids):
        reopened += session.execute(
            update(Image).where(Image.id.in_(block), Image.state == ImageState.DONE.value)
            .values(attempts=0, finished_at=None, **queued)
            .returning(Image.id),
            execution_options={"synchronize_session": False}).scalars().all()
    return sorted(reopened)
