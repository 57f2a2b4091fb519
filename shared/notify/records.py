"""The ``notifications`` table: claim by insert-or-nothing, then record the outcome.

Whoever inserts the (channel, event, subject) row sends; everyone else (another worker, a
redelivered message, a second run of the hook) finds it taken and does nothing. A claim left
``pending`` by a process that died mid-send may be taken over after ``STALE_AFTER``.

The follow-up (``take_failed``, ``owed``) runs later, from the sweeper: ``failed`` rows are
taken back for another delivery, and events the database shows but no row records (a
process that died between its commit and its claim, an exam result written by a report
command) are found, both within a give-up window.

Claims, failures and the windows that judge them are read on the database's clock
(``database_now``), as image claims are: notifiers on several hosts share no other. Judged on
its own clock, a host running STALE_AFTER ahead took over a row another process was still
sending (a second e-mail or webhook of the same alert), and one running behind held back
re-sends and took dead senders' rows over late.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import ColumnElement, Exists, and_, case, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.batches import summary_due_at
from shared.db.clock import Clocks, database_now
from shared.db.lifecycle import in_blocks
from shared.db.schema import Batch, ExamResult, Image, Notification, Prediction
from shared.db.upsert import insert_missing
from shared.exams import read_first_suspicion_sql
from shared.notify.message import Event, Notice
from shared.read_alone import scored_alone

# obsolete: the event no longer calls for this notification (the exam was re-scored below
# the alert threshold before a re-send); never sent again.
PENDING, SENT, FAILED, OBSOLETE = "pending", "sent", "failed", "obsolete"
# Far longer than one delivery can take (timeouts x attempts + backoff) after its wait in a
# worker's hand-off queue (dispatch.MAX_QUEUE_WAIT), so a live sender is never overtaken.
STALE_AFTER = timedelta(minutes=15)
# A site day's length when its clocks go back: the most a day batch's summary waits.
_LONGEST_DAY = timedelta(hours=25)


def claim(session: Session, channel: str, notice: Notice) -> int | None:
    """The id of the row this caller now owns, or None when it is someone else's."""
    now = database_now(session)
    ids = insert_missing(session, Notification, [{
        "channel": channel, "event": notice.event.value, "subject_key": notice.subject_key,
        "batch_id": notice.batch_id, "study_id": notice.study_id,
        "image_id": notice.image_id, "status": PENDING,
        "attempts": 0, "claimed_at": now,
    }], conflict=("channel", "event", "subject_key"), returning=Notification.id)
    if ids:
        return int(ids[0])
    taken = session.execute(
        update(Notification)
        .where(Notification.channel == channel, Notification.event == notice.event.value,
               Notification.subject_key == notice.subject_key,
               and_(Notification.status == PENDING, Notification.claimed_at < now - STALE_AFTER))
        .values(claimed_at=now)
        .returning(Notification.id),
        execution_options={"synchronize_session": False},
    ).scalars().first()
    return int(taken) if taken is not None else None


def record(session: Session, notification_id: int, *, attempts: int, error: str | None) -> None:
    now = database_now(session)
    # A failed row's claimed_at becomes the end of its last attempt: the re-send wait
    # (MAMMO_NOTIFY_RESEND_AFTER_S) counts from the failure, not from a claim made a whole
    # retry policy (about 27 s) earlier.
    failed = {} if error is None else {"claimed_at": now}
    session.execute(
        update(Notification).where(Notification.id == notification_id).values(
            status=SENT if error is None else FAILED,
            attempts=Notification.attempts + attempts,
            last_error=None if error is None else error[:2000],
            sent_at=now if error is None else None, **failed,
        ),
        execution_options={"synchronize_session": False},
    )


def release(session: Session, notification_ids: Sequence[int], reason: str) -> int:
    """Record claimed rows this process will not send (it stops, or its queue is full) as
    ``failed`` with no attempt, so the sweeper re-sends them after
    MAMMO_NOTIFY_RESEND_AFTER_S instead of finding them ``pending`` for ``STALE_AFTER``."""
    if not notification_ids:
        return 0
    now = database_now(session)  # the re-send wait counts from it (``take_failed``)
    released = session.execute(
        update(Notification)
        .where(Notification.id.in_(list(notification_ids)), Notification.status == PENDING)
        .values(status=FAILED, last_error=reason[:2000], claimed_at=now)
        .returning(Notification.id),
        execution_options={"synchronize_session": False},
    ).all()
    return len(released)


@dataclass(frozen=True)
class Retake:
    """A notification row taken back (now ``pending``, claimed by the caller) to re-send."""

    id: int
    channel: str
    event: Event
    batch_id: int | None
    study_id: int | None
    image_id: int | None = None  # an alert of an image read alone (no exam)


def take_failed(session: Session, channels: Sequence[str], *, retry_after: timedelta,
                since: datetime) -> list[Retake]:
    """Claim the rows of ``channels`` created after ``since`` that failed more than
    ``retry_after`` ago, or were left ``pending`` by a process that died mid-send. ``since``
    is a time on the database's clock (``database_now``), which rows are stamped on.

    One conditional UPDATE: of several sweepers, each row goes to exactly one.
    """
    now = database_now(session)
    rows = session.execute(
        update(Notification)
        .where(Notification.channel.in_(list(channels)), Notification.created_at >= since,
               or_(and_(Notification.status == FAILED,
                        Notification.claimed_at < now - retry_after),
                   and_(Notification.status == PENDING,
                        Notification.claimed_at < now - STALE_AFTER)))
        .values(status=PENDING, claimed_at=now)
        .returning(Notification.id, Notification.channel, Notification.event,
                   Notification.batch_id, Notification.study_id, Notification.image_id),
        execution_options={"synchronize_session": False},
    ).all()
    return [Retake(int(i), str(c), Event(e), b, s, m) for i, c, e, b, s, m in rows]


def mark_obsolete(session: Session, notification_id: int, reason: str) -> None:
    session.execute(
        update(Notification).where(Notification.id == notification_id)
        .values(status=OBSOLETE, last_error=reason[:2000]),
        execution_options={"synchronize_session": False},
    )


def summarised(batch_id: ColumnElement[int] | InstrumentedAttribute[int] | int) -> Exists:
    """Whether a batch gets a summary at all: it has images of its own. One whose every
    file was already known (each a copy of an earlier image, ``duplicate_submissions``)
    has nothing new to tell: ``content.batch_notice`` makes no notice of it, so no row is
    ever recorded, and ``owed`` must not count it either (it did: "N batch summary(ies)
    ... were owed; ... 0 delivered" at every sweep, for as long as the give-up window)."""
    return select(Image.id).where(Image.batch_id == batch_id).exists()


def owed(session: Session, channel: str, *, since: datetime, now: datetime,
         alert_threshold: int, zone: tzinfo = UTC) -> tuple[list[int], list[int]]:
    """(batches, studies) whose summary fell due / that were scored at or above the alert
    threshold after ``since``, with no notification row on ``channel``: events nobody
    claimed. A drop-folder day batch falls due at the end of its day at the site (``zone``,
    MAMMO_SITE_TIMEZONE), up to 25 hours after it last finished (``shared.batches``): a
    batch finished that long before ``since`` may fall due after it. A batch of copies
    alone is never due
    (``summarised``). ``since`` and ``now`` are times on the database's clock
    (``database_now``), read once by the caller for all its channels."""
    def recorded(event: Event, subject: ColumnElement[bool]) -> Exists:
        return (select(Notification.id)
                .where(Notification.channel == channel, Notification.event == event.value,
                       subject).exists())

    finished = session.execute(
        select(Batch.id, Batch.name, Batch.finished_at).where(
            Batch.finished_at >= since - _LONGEST_DAY, summarised(Batch.id),
            ~recorded(Event.BATCH_COMPLETE, Notification.batch_id == Batch.id))
        .order_by(Batch.id)).all()
    batches = [batch_id for batch_id, name, at in finished
               if (due := summary_due_at(name, at, zone)) is not None
               and since <= due <= now]
    studies = session.execute(
        select(ExamResult.study_id).where(
            ExamResult.superseded_at.is_(None), ExamResult.created_at >= since,
            read_first_suspicion_sql() >= alert_threshold,
            ~recorded(Event.EXAM_ALERT, Notification.study_id == ExamResult.study_id))
        .order_by(ExamResult.study_id)).scalars().all()
    return batches, list(studies)


def alone_at_or_above(session: Session, image_ids: Iterable[int], threshold: int) -> list[int]:
    """Those of ``image_ids`` scored outside any exam at or above ``threshold``."""
    found: list[int] = []
    for block in in_blocks(image_ids):
        found += session.execute(scored_alone(Image.id).where(
            Image.id.in_(block), Prediction.suspicion >= threshold)).scalars()
    return sorted(found)


def owed_images(session: Session, channel: str, *, since: datetime,
                alert_threshold: int) -> list[int]:
    """The images scored outside any exam at or above the alert threshold after ``since``
    (their current prediction's time, on the database's clock) with no alert row on
    ``channel``: what ``owed`` is for exams."""
    recorded = (select(Notification.id)
                .where(Notification.channel == channel,
                       Notification.event == Event.EXAM_ALERT.value,
                       Notification.image_id == Image.id).exists())
    return list(session.execute(
        scored_alone(Image.id).where(Prediction.created_at >= since,
                                     Prediction.suspicion >= alert_threshold, ~recorded)
        .order_by(Image.id)).scalars().all())


def unsent_since(session: Session, since_here: datetime) -> int:
    """How many notifications claimed at or after ``since_here`` are not delivered:
    ``failed``, or still ``pending`` (a sender cut short, e.g. when ``mammo run`` stopped
    waiting).

    ``since_here`` is a time on this process's clock (when its run started), and claims are
    stamped on the database's: it is moved by the two clocks' difference now, so that a
    database whose clock is off this host's neither hides this run's rows nor counts older
    ones."""
    since = since_here - Clocks.read(session).here_ahead_by
    return int(session.execute(
        select(func.count()).select_from(Notification).where(
            Notification.claimed_at >= since,
            Notification.status.in_([PENDING, FAILED]))).scalar_one())


@dataclass(frozen=True)
class Undelivered:
    """Notifications still owed within the give-up window (older ones are never sent)."""

    failed: int  # failed, or left ``pending`` past STALE_AFTER: nobody is sending them
    pending: int  # being sent now, or left by a worker stopped mid-send (not knowable apart)


def undelivered(session: Session, *, give_up_after: timedelta) -> Undelivered:
    now = database_now(session)  # rows are created and claimed on it
    abandoned = or_(Notification.status == FAILED, Notification.claimed_at < now - STALE_AFTER)
    owed, failed = session.execute(
        select(func.count(), func.coalesce(func.sum(case((abandoned, 1), else_=0)), 0))
        .select_from(Notification).where(Notification.created_at >= now - give_up_after,
                                         Notification.status.in_([PENDING, FAILED]))).one()
    return Undelivered(failed=int(failed), pending=int(owed) - int(failed))
