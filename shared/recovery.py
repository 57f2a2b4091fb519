"""The sweeper: re-send wake-up messages for work the database says is stuck, and follow up.

Redis is not trusted to keep messages (restart without persistence, eviction, a worker
SIGKILLed before its message comes back). The database is: an image ``queued`` for too
long, owed a message no one sent (a send that failed), or ``processing`` under an expired
lease, gets a new message, at the priority of its batch (raised by an urgent batch that
sent a copy of it). A queued image whose message was sent is judged by the messages still
waiting at its own priority or a more urgent one (``waiting_ahead``), after a wait of its
priority's (``lost_after``). Re-sending is safe because claims and upserts make a second
delivery a no-op.

The follow-up does the same for what happens after the images: exams whose missing views
timed out get their (incomplete) result, exams whose refresh after a save was skipped (a
database restarting) or cut off (a worker killed) get theirs, and notifications owed or
failed are delivered (``Notifier.follow_up``), so that none waits for someone to open a
report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import Clocks, database_now
from shared.db.schema import Image
from shared.enums import ImageState, Priority
from shared.errors import first_line
from shared.exams import refresh_due_exams
from shared.notify import FollowUpReport, Notifier
from shared.queue import enqueue_by_priority, queue_depths
from shared.timeutil import as_utc, utc_text

log = logging.getLogger(__name__)


def lost_message_age_s(requeue_after_s: int, broker_uptime: float | None) -> int:
    """How long a queued image whose message was sent waits before the sweeper presumes
    that message lost.

    Ordinarily ``requeue_after_s``: an image may wait that long in a busy queue. But an
    image sent before the broker last started had its message in a broker that stopped;
    with the queue empty (which ``sweep`` still requires of those) it is lost, so it is
    re-sent at the next sweep rather than ``requeue_after_s`` later (11 min 40 s measured
    before). Send times are stamped on the database's clock and judged on it
    (``find_stuck``); an image stamped within a moment of the restart may fall on either
    side: at worst it waits the ordinary time, or gets a harmless second message.

    Not for images owed a message (``owed_older_than_s`` of ``sweep``): none of theirs was
    in the broker, so its restart says nothing of them, and the full wait is what leaves
    them to a sender still at work (a long `mammo submit` registering, a re-score between
    its reopen and its send); they are sent at any broker depth.
    """
    if broker_uptime is None:
        return requeue_after_s
    return min(requeue_after_s, int(broker_uptime))


@dataclass(frozen=True)
class LostAfter:
    """How long a queued image whose message was sent waits, by its priority, before the
    sweeper may presume that message lost (``sweep`` also wants none waiting ahead of it)."""

    routine_s: int
    urgent_s: int


def lost_after(settings: Settings, broker_uptime: float | None) -> LostAfter:
    """The sweeper's waits: ``MAMMO_REQUEUE_AFTER_S``, and ``MAMMO_URGENT_REQUEUE_AFTER_S``
    for an urgent image, both cut short by a broker restart (``lost_message_age_s``); the
    urgent one is never the longer.

    Why an urgent image waits less: a worker takes an urgent message before any routine one
    (kombu's BRPOP asks the most urgent list first), so it waits at most for one chunk per
    worker process (4.2 s at most measured under a load of 8-12). One still queued two
    minutes after its send, with no urgent message left in the broker, lost its message: a
    worker killed after receiving it leaves it in kombu's unacked hash until the visibility
    timeout (45 min), and Redis may have restarted or evicted it. The routine wait is sized
    for a busy night's queue, which an urgent image never waits behind. A wrong guess (a
    worker whose pool is still loading the model holds it) costs a second message, which
    the claims make a no-op."""
    routine = lost_message_age_s(settings.requeue_after_s, broker_uptime)
    return LostAfter(routine, min(settings.urgent_requeue_after_s, routine))


def waiting_ahead(depths: Mapping[int, int], priority: Priority) -> int:
    """Of the messages waiting in the broker at each priority step (``queue_depths``), those
    a worker takes before, or with, a message of ``priority``: at its step or a more urgent
    (lower) one. While one does, a long wait is a busy queue; while none does, a message of
    that priority still in the broker would have been taken, so a queued image sent one
    over its wait ago (``lost_after``) lost it. Routine messages never delay an urgent one."""
    return sum(count for step, count in depths.items() if step <= priority.broker_priority)


@dataclass
class SweepReport:
    stale_queued: list[int] = field(default_factory=list)  # the owed ones included
    expired_claims: list[int] = field(default_factory=list)
    # Of ``stale_queued``, those with no message sent since they were queued (a send that
    # failed, a producer stopped before its send): re-sent whatever the broker holds.
    owed: list[int] = field(default_factory=list)
    # The priority of each of ``sent_before`` (``lifecycle.priorities_of``).
    priorities: dict[int, Priority] = field(default_factory=dict)
    # Of ``sent_before``, those sent over ``force_older_than_s`` ago: re-sent whatever the
    # broker holds.
    overdue: list[int] = field(default_factory=list)
    # Of ``sent_before``, those a sweep left alone: messages wait ahead of them.
    left_alone: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    messages: int = 0
    note: str = ""

    @property
    def sent_before(self) -> list[int]:
        """Of ``stale_queued``, those whose message was sent: lost, or still waiting in a
        busy queue."""
        owed = set(self.owed)
        return [i for i in self.stale_queued if i not in owed]

    def presumed_lost(self, depths: Mapping[int, int] | None) -> list[int]:
        """Of ``sent_before``, those whose message is presumed lost: none waits in the
        broker at its priority or a more urgent one (``waiting_ahead`` of ``depths``; None:
        the broker could not be asked, which presumes none lost), or sent over the wait
        that needs no look at the broker (``overdue``)."""
        overdue = set(self.overdue)
        return [i for i in self.sent_before if i in overdue or (
            depths is not None and waiting_ahead(depths, self.priority_of(i)) == 0)]

    def priority_of(self, image_id: int) -> Priority:
        return self.priorities.get(image_id, Priority.ROUTINE)

    def summary(self) -> str:
        owed = f" ({len(self.owed)} with no message sent)" if self.owed else ""
        text = (f"re-queued {len(self.requeued)} image(s) in {self.messages} message(s): "
                f"{len(self.stale_queued)} queued too long{owed}, {len(self.expired_claims)} "
                "claimed by a worker that stopped")
        return f"{text} ({self.note})" if self.note else text


def find_stuck(
    session: Session, settings: Settings, *, queued_older_than_s: int,
    urgent_older_than_s: int | None = None, owed_older_than_s: int | None = None,
    force_older_than_s: int | None = None, batch_id: int | None = None,
) -> SweepReport:
    """What ``sweep`` may re-send: queued images whose message was sent over
    ``queued_older_than_s`` ago (``urgent_older_than_s`` for an urgent one, by default the
    same wait), each with its priority, those among them sent over ``force_older_than_s``
    ago (``overdue``), those owed a message (never sent) queued over ``owed_older_than_s``
    ago (by default ``queued_older_than_s``) or whose sender gave up, and expired claims."""
    now = database_now(session)  # what the claims and send times were stamped on
    waits = {Priority.ROUTINE: queued_older_than_s,
             Priority.URGENT: queued_older_than_s if urgent_older_than_s is None
             else urgent_older_than_s}
    owed_wait = queued_older_than_s if owed_older_than_s is None else owed_older_than_s
    found = lifecycle.find_stale(
        session, queued_before=now - timedelta(seconds=min(
            *waits.values(), queued_older_than_s if force_older_than_s is None
            else force_older_than_s)),
        owed_before=now - timedelta(seconds=owed_wait),
        claimed_before=now - timedelta(seconds=settings.claim_lease_s), batch_id=batch_id)
    sent = [i for i in found if not i.claimed and not i.owed]
    priorities = lifecycle.priorities_of(session, [i.id for i in sent])

    def sent_over(image: lifecycle.StaleImage, seconds: int) -> bool:
        return image.sent_at is not None and image.sent_at < now - timedelta(seconds=seconds)

    overdue = (set() if force_older_than_s is None else
               {i.id for i in sent if sent_over(i, force_older_than_s)})
    # Sent over their own priority's wait ago, or overdue.
    waited = overdue | {i.id for i in sent if sent_over(i, waits[priorities[i.id]])}
    return SweepReport(
        stale_queued=[i.id for i in found if not i.claimed and (i.owed or i.id in waited)],
        expired_claims=[i.id for i in found if i.claimed],
        owed=[i.id for i in found if i.owed],
        priorities={i: priorities[i] for i in sorted(waited)}, overdue=sorted(overdue))


def sweep(
    sessions: sessionmaker[Session], app: Celery, settings: Settings, *,
    queued_older_than_s: int, urgent_older_than_s: int | None = None,
    owed_older_than_s: int | None = None, force_older_than_s: int | None = None,
    batch_id: int | None = None, force: bool = False, dry_run: bool = False,
) -> SweepReport:
    """Re-queue stuck images and say what was done.

    Without ``force`` (the automatic sweeper in workers), a queued image whose message was
    sent over its wait ago (``queued_older_than_s``; ``urgent_older_than_s`` for an urgent
    one: ``lost_after``) is re-sent only when no message waits in the broker at its
    priority or a more urgent one (``waiting_ahead``): while one does, a long wait is a
    busy night, not a lost message; routine messages say nothing of an urgent one, which
    is taken before them. Those sent over ``force_older_than_s`` ago are re-sent whatever
    the broker holds, and with ``force`` all are. Expired claims are always
    re-sent, and queued again first: the next sweep finds them waiting for that message,
    not expired again. Images owed a message (its send failed: ``requeue``) are always
    sent: none waits for them in the broker, however full it is. Their wait is
    ``owed_older_than_s`` (by default ``queued_older_than_s``): a wait cut short by a broker
    restart (``lost_message_age_s``) is no measure of theirs.
    """
    with sessions() as session:
        report = find_stuck(session, settings, queued_older_than_s=queued_older_than_s,
                            urgent_older_than_s=urgent_older_than_s,
                            owed_older_than_s=owed_older_than_s,
                            force_older_than_s=force_older_than_s, batch_id=batch_id)
    if not dry_run:  # the claims a live worker renewed meanwhile are its own again
        report.expired_claims = _release_expired(sessions, settings, report.expired_claims)
    targets = report.expired_claims + report.owed
    if sent_before := report.sent_before:
        depths = None if force else queue_depths(app)
        lost = sent_before if force else report.presumed_lost(depths)
        targets += lost
        report.left_alone = sorted(set(sent_before) - set(lost))
        if report.left_alone:
            report.note = _left_alone_note(report, depths)
    if dry_run or not targets:
        return report
    report.requeued = sorted(targets)
    report.messages = requeue(sessions, app, settings, report.requeued)
    return report


def _left_alone_note(report: SweepReport, depths: Mapping[int, int] | None) -> str:
    left = f"{len(report.left_alone)} queued image(s) whose message was sent left alone"
    if depths is None:
        return f"the broker's queue could not be read; {left}"
    least_urgent = max(map(report.priority_of, report.left_alone),
                       key=lambda priority: priority.broker_priority)
    return (f"broker still holds {waiting_ahead(depths, least_urgent)} message(s) at their "
            f"priority or a more urgent one; {left}")


def requeue(sessions: sessionmaker[Session], app: Celery, settings: Settings,
            image_ids: list[int], *, chunk_size: int | None = None) -> int:
    """Send ``image_ids`` again, each at its own priority (``lifecycle.priorities_of``: an
    urgent batch's images are never re-sent as routine), and stamp them enqueued; return
    the messages sent.

    A send that fails (the broker away) leaves those still queued owed a message, for
    the next sweep to send whatever the broker holds (``leave_to_sweeper``), and
    raises: a broker that stays away costs one failed send per sweep, no more.
    """
    if not image_ids:
        return 0
    with sessions() as session:
        groups = lifecycle.by_priority(session, image_ids)
    try:
        sent = enqueue_by_priority(app, groups, chunk_size=chunk_size or settings.chunk_size)
    except Exception:
        leave_to_sweeper(sessions, image_ids)
        raise
    with sessions() as session:
        lifecycle.mark_enqueued(session, image_ids)
        session.commit()
    return sent


def leave_to_sweeper(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> None:
    """Record that no message for ``image_ids`` is on its way (a send that failed, a chunk
    that gave up its retries): the next sweep sends those still queued, whatever the broker
    holds (``lifecycle.owe_message``).

    Best effort: the failure that brought the caller here is the error to report. With the
    database away too, the images keep their stamps, and a sweep sends them after its
    usual wait (or, sent before, once the broker queue is empty)."""
    try:
        with sessions() as session:
            lifecycle.owe_message(session, image_ids)
            session.commit()
    except SQLAlchemyError as exc:
        log.warning("could not record %d image(s) as owed a message: %s: %s",
                    len(image_ids), type(exc).__name__, exc)


@dataclass(frozen=True)
class HeldClaims:
    """Images among those a process waits on that another process holds under a live claim."""

    count: int
    # The latest, on this host's clock: when the last of them may be taken over.
    lease_ends: datetime | None

    def describe(self) -> str:
        # In UTC, as every time the product shows: a host's local zone would put the same
        # moment at another hour on each machine an operator reads it from.
        until = ("" if self.lease_ends is None else
                 f" until their lease ends at {utc_text(self.lease_ends)}")
        return (f"{self.count} image(s) claimed by another process (a run or worker still "
                f"busy with them, or one stopped mid-chunk){until}")


def _processing_among(block: list[int]) -> ColumnElement[bool]:
    return and_(Image.id.in_(block), Image.state == ImageState.PROCESSING.value)


def queued_count(session: Session, batch_id: int | None = None) -> int:
    """How many images are queued (of ``batch_id`` only, when given)."""
    stmt = select(func.count()).select_from(Image).where(
        Image.state == ImageState.QUEUED.value)
    if batch_id is not None:
        stmt = stmt.where(Image.batch_id == batch_id)
    return int(session.scalar(stmt) or 0)


def claimed_images(session: Session, batch_id: int | None = None) -> list[int]:
    """Every image under a claim, live or expired (of ``batch_id`` only, when given)."""
    stmt = select(Image.id).where(Image.state == ImageState.PROCESSING.value)
    if batch_id is not None:
        stmt = stmt.where(Image.batch_id == batch_id)
    return sorted(session.scalars(stmt))


def held_claims(session: Session, settings: Settings, image_ids: Sequence[int]) -> HeldClaims:
    """What a waiting run says while another process's claims keep it from ``image_ids``.

    Only live claims count: one whose lease has passed is taken over at once, and its
    lease's end is no time to wait for. Leases are judged on the database's clock; their
    end is told on this host's, which is the one the reader has in front of them."""
    clocks = Clocks.read(session)
    lease = timedelta(seconds=settings.claim_lease_s)
    live = Image.claimed_at >= clocks.now - lease
    count, stamps = 0, []
    for block in lifecycle.in_blocks(image_ids):
        found, newest = session.execute(select(func.count(), func.max(Image.claimed_at))
                                        .where(_processing_among(block), live)).one()
        count += int(found)
        stamps += [stamp] if (stamp := as_utc(newest)) else []
    return HeldClaims(count, max(stamps) + lease + clocks.here_ahead_by if stamps else None)


def take_over_expired(sessions: sessionmaker[Session], app: Celery, settings: Settings,
                      image_ids: Sequence[int]) -> list[int]:
    """Re-send the images among ``image_ids`` whose claim's lease has passed (their holder
    stopped without finishing them: a killed run or worker); return their ids.

    The sweeper's rule for one process's own wait: the next message claims them, since an
    expired claim is claimable (``lifecycle.claim``)."""
    expired = _release_expired(sessions, settings, image_ids)
    requeue(sessions, app, settings, expired)
    return expired


def _release_expired(sessions: sessionmaker[Session], settings: Settings,
                     image_ids: Sequence[int]) -> list[int]:
    """Queue again the images among ``image_ids`` whose claim's lease has passed, before
    their new message is sent; return those queued (``lifecycle.release_expired``).

    They are owed that message until ``requeue`` stamps it sent: a send that fails (the
    broker away) leaves them owed one, for the next sweep to send whatever the broker
    holds, not waiting for an empty queue as if a message of theirs were in it."""
    if not image_ids:
        return []
    with sessions() as session:
        cutoff = database_now(session) - timedelta(seconds=settings.claim_lease_s)
        return lifecycle.release_expired(session, image_ids, claimed_before=cutoff)


@dataclass(frozen=True)
class FollowUp:
    exams: int  # exam results written: those below, and refreshes a save left owed
    notifications: FollowUpReport
    batches: int = 0  # finished batches nobody had stamped (a process died in between)
    timed_out: int = 0  # of ``exams``, incomplete exams whose missing views' wait ran out
    # Open batches that never got a file, deleted (``lifecycle.discard_empty_batches``).
    discarded: tuple[int, ...] = ()

    @property
    def refreshed(self) -> int:
        """Of ``exams``, results owed after a save (its refresh skipped, e.g. while the
        database restarted, or cut off by a worker's death): not timed out, most of them
        complete four-view exams."""
        return self.exams - self.timed_out

    def summary(self) -> str:
        owed = (f"{self.refreshed} exam result(s) refreshed (owed after a save whose refresh "
                "was skipped or cut off); " if self.refreshed else "")
        stamped = f"{self.batches} finished batch(es) stamped late; " if self.batches else ""
        discarded = (f"{len(self.discarded)} empty batch(es) deleted (made over "
                     f"{lifecycle.EMPTY_BATCH_GRACE_S // 3600} h ago, never given a file: "
                     f"{', '.join(map(str, self.discarded))}); " if self.discarded else "")
        return (f"{owed}{self.timed_out} timed-out exam(s) given their result; {stamped}"
                f"{discarded}{self.notifications.summary()}")

    def __bool__(self) -> bool:
        return bool(self.exams or self.notifications or self.batches or self.discarded)


def follow_up(sessions: sessionmaker[Session], settings: Settings,
              notifier: Notifier) -> FollowUp:
    """Due exam results first, so an incomplete exam's alert goes out in the same pass;
    batches left open with nothing active are stamped, so their summary is owed too."""
    with sessions() as session:
        changes = refresh_due_exams(session, timeout_s=settings.exam_timeout_s)
    with sessions() as session:
        stamped = lifecycle.finish_open_batches(session)
        session.commit()
    return FollowUp(len(changes), notifier.follow_up(), len(stamped),
                    timed_out=sum(change.timed_out for change in changes),
                    discarded=tuple(_discard_empty_batches(sessions)))


def _discard_empty_batches(sessions: sessionmaker[Session]) -> list[int]:
    """Open batches never stamped by ``finish_open_batches`` (nothing in them to finish),
    deleted after a day: an earlier release's submit killed before its first file left its
    batch open for ever. A file registered into one at that very moment (its first block
    a day late) makes the database refuse the delete: it is kept, and the pass goes on."""
    try:
        with sessions() as session:
            discarded = lifecycle.discard_empty_batches(session)
            session.commit()
    except IntegrityError as exc:
        log.warning("empty batches not deleted: %s", first_line(exc.orig))
        return []
    return discarded


class BackgroundFollowUp:
    """``follow_up`` in a thread, one at a time, for loops that must not wait on it.

    A hanging mail server can hold a delivery for half a minute per retry; a worker's timer
    (which feeds its pool) or the watcher's loop would stall that long. A pass still
    running when the next is due is not stacked on: the next due one picks up the rest.
    """

    def __init__(self, settings: Settings, notifier: Notifier, log: logging.Logger) -> None:
        self.settings = settings
        self.notifier = notifier
        self.log = log
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self.run, name="mammo-follow-up", daemon=True)
        self._thread.start()

    def run(self) -> None:
        try:
            followed = follow_up(self.notifier.sessions, self.settings, self.notifier)
        except Exception as exc:  # the loop that kicked it goes on; the next pass retries
            self.log.warning("follow-up: %s: %s", type(exc).__name__, exc)
            return
        if not followed:
            return
        if self._routine(followed):
            # A drop folder's day summary is the follow-up's to send once its day is over:
            # the design, not a recovery (a warning at every midnight read as a failure).
            self.log.info("follow-up: %s", followed.notifications.summary())
        else:
            self.log.warning("follow-up: %s", followed.summary())

    @staticmethod
    def _routine(followed: FollowUp) -> bool:
        """Only day summaries that fell due and went: no exam result, batch or delivery
        that its own process should have seen to and did not."""
        return not (followed.exams or followed.batches or followed.discarded
                    or followed.notifications.missed)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
