"""Send the notifications an event calls for, once, and never let a failure escape.

Delivery starts in the process that saw the event (the worker that finished the batch or
scored the exam), right after its transaction committed: the notice is read and its row
claimed there. A worker's notifier (``background=True``) then hands the send to a thread per
channel (``handoff``), so a slow or hanging receiver never holds the task and its scoring;
other callers (``mammo submit``, the watcher, the sweeper's follow-up, already in a thread of
its own) send in-line, bounded by MAMMO_NOTIFY_TIMEOUT_S x attempts plus the capped backoff.
Nothing is ever raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import summary_due_at
from shared.config import Settings
from shared.db.clock import database_now
from shared.db.lifecycle import in_blocks
from shared.db.schema import Batch
from shared.errors import NotificationError, NotificationRejectedError, first_line
from shared.notify import records
from shared.notify.content import batch_notice, exam_alert_notice, image_alert_notice
from shared.notify.handoff import HandOff, Job
from shared.notify.mail import EmailChannel
from shared.notify.message import Event, Notice
from shared.notify.retry import RetryPolicy, deliver_with_retry
from shared.notify.webhook import WebhookChannel
from shared.timeutil import as_utc

log = logging.getLogger(__name__)

# Deliveries a worker process holds per channel, waiting for a slow receiver; more are
# recorded failed at once and re-sent by the sweeper.
QUEUE_CAPACITY = 64
# A handed-off row is still ``pending`` under this process's claim: it must be sent well
# before another process may take it over (records.STALE_AFTER), a whole delivery included.
MAX_QUEUE_WAIT = records.STALE_AFTER / 3


def queue_wait_limit_s(policy: RetryPolicy, attempt_timeout_s: float) -> float:
    """How long a handed-off delivery may wait and still finish, its every retry included,
    before another process may take its row over as abandoned: the settings allow a
    delivery of an hour (60 s x 10 attempts + backoff), far past STALE_AFTER, and a row
    taken over while its sender lives is sent twice. Never negative: 0 sends nothing late."""
    finish_by = records.STALE_AFTER.total_seconds() - policy.longest_s(attempt_timeout_s)
    return max(0.0, min(MAX_QUEUE_WAIT.total_seconds(), finish_by))
_RESENT = "a worker's sweeper or `mammo recover` re-sends it after MAMMO_NOTIFY_RESEND_AFTER_S"

# Renders the self-contained batch summary HTML, or None when there is none to attach.
BatchHtml = Callable[[Session, int], str | None]


def summary_html(settings: Settings) -> BatchHtml:
    """The batch summary page of shared/reports (charts embedded: it opens offline)."""
    def render(session: Session, batch_id: int) -> str | None:
        # Imported on use: matplotlib is the reports extra, and a producer-only install
        # (which also stamps batches that end at intake) may lack it.
        from shared.reports.batch_summary import render_batch_html

        return render_batch_html(session, batch_id, settings=settings)

    return render


def _first_line(exc: BaseException) -> str:
    return first_line(exc)[:300]


class Channel(Protocol):
    name: str

    def send(self, notice: Notice) -> None: ...


def channels_for(settings: Settings) -> list[Channel]:
    found: list[Channel] = []
    if settings.smtp_host:
        found.append(EmailChannel(settings))
    if settings.webhook_url:
        found.append(WebhookChannel(settings))
    return found


@dataclass
class Sends:
    """The deliveries this process made of one event, one per channel whose row it claimed:
    a row another process claimed first (two sweepers at once) is that one's to send and to
    count. A worker's hand-offs finish later, in their thread, and are counted by neither."""

    delivered: int = 0
    failed: int = 0

    def __bool__(self) -> bool:
        return bool(self.delivered or self.failed)


@dataclass
class FollowUpReport:
    """What one follow-up sent.

    A drop folder's day summary is the follow-up's to send, by design: nothing sends it
    before its day is over (``shared.batches.summary_due_at``). Sent, it is routine. Anything
    else here is worth an operator's eye (``missed``): an event whose process stopped before
    sending it, a delivery that failed, a failed one tried again."""

    owed_batches: int = 0  # batch summaries due with no notification recorded, sent now
    # ... of which drop-folder day batches that finished before their day was over
    day_summaries: list[int] = field(default_factory=list)
    owed_alerts: int = 0  # exams (images read alone) at or above the threshold no alert
    # recorded, sent now
    sent: int = 0  # deliveries of the owed events above that went (one per channel)
    failed: int = 0  # ... that failed, re-sent after MAMMO_NOTIFY_RESEND_AFTER_S
    retried: int = 0  # failed (or abandoned) deliveries taken back
    delivered: int = 0  # ... of which now delivered
    obsolete: int = 0  # ... of which no longer called for

    @property
    def missed(self) -> bool:
        """Anything but day summaries that fell due and went."""
        return bool(self.owed_batches - len(self.day_summaries) or self.owed_alerts
                    or self.failed or self.retried)

    def count(self, sends: Sends) -> None:
        self.sent += sends.delivered
        self.failed += sends.failed

    def summary(self) -> str:
        if self.day_summaries and not self.missed:
            return f"notifications: {_day_summaries(self.day_summaries)} sent"
        days = (f" ({len(self.day_summaries)} of them day summaries, due once their day was "
                "over)" if self.day_summaries else "")
        return (f"notifications: {self.owed_batches} batch summary(ies){days} and "
                f"{self.owed_alerts} alert(s) were owed ({self.sent} delivery(ies) sent, "
                f"{self.failed} failed); {self.retried} failed delivery(ies) retried, "
                f"{self.delivered} delivered, {self.obsolete} no longer called for")

    def __bool__(self) -> bool:
        return bool(self.owed_batches or self.owed_alerts or self.retried)


def _day_summaries(batch_ids: Sequence[int]) -> str:
    if len(batch_ids) == 1:
        return f"day summary of batch {batch_ids[0]}"
    return f"day summaries of batches {', '.join(map(str, batch_ids))}"


def _due_at_day_end(session: Session, batch_ids: Sequence[int], zone: tzinfo) -> set[int]:
    """Of these batches, the drop-folder day batches that finished before their day was
    over: their summary fell due when the day ended, and it was nobody's to send until
    then but the follow-up's. Any other owed summary is one the process that finished its
    batch should have sent (it stopped first)."""
    deferred: set[int] = set()
    for block in in_blocks(batch_ids):
        for batch_id, name, finished_at in session.execute(
                select(Batch.id, Batch.name, Batch.finished_at).where(Batch.id.in_(block))):
            due, finished = summary_due_at(name, finished_at, zone), as_utc(finished_at)
            if due is not None and finished is not None and due > finished:
                deferred.add(batch_id)
    return deferred


class Notifier:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *,
                 batch_html: BatchHtml | None = None,
                 channels: Sequence[Channel] | None = None, background: bool = False) -> None:
        self.settings = settings
        self.sessions = sessions
        self.batch_html = batch_html or summary_html(settings)
        self.channels = list(channels_for(settings) if channels is None else channels)
        self.policy = RetryPolicy.from_settings(settings)
        self._handoff = HandOff(capacity=QUEUE_CAPACITY) if background else None
        # Rows this process claimed and has not recorded yet: what a stop leaves unsent.
        self._owned: set[int] = set()
        self._owned_lock = threading.Lock()
        self._delivered_at = time.monotonic()
        self._closing = False

    def batches_finished(self, batch_ids: Iterable[int]) -> None:
        for batch_id in sorted(set(batch_ids)) if self.channels else ():
            self._summarise(batch_id)

    def exams_changed(self, study_ids: Iterable[int]) -> None:
        for study_id in sorted(set(study_ids)) if self.channels else ():
            self._alert_exam(study_id)

    def images_scored(self, image_ids: Iterable[int]) -> None:
        """Alert the images of these scored outside any exam (no study) at or above the
        threshold: no exam result holds them, so ``exams_changed`` never sees them. One
        query finds them among the ids; the others (an exam's views) are the exams'."""
        if not self.channels:
            return
        try:
            with self.sessions() as session:
                alone = records.alone_at_or_above(session, image_ids,
                                                  self.settings.alert_suspicion)
        except Exception as exc:  # a notification never fails the batch
            log.warning("alerts for images read alone skipped after an error: %s: %s",
                        type(exc).__name__, _first_line(exc))
            return
        for image_id in alone:
            self._alert_image(image_id)

    def _summarise(self, batch_id: int) -> Sends:
        return self._guarded(f"batch {batch_id}", partial(self._batch, batch_id=batch_id))

    def _alert_exam(self, study_id: int) -> Sends:
        return self._guarded(f"study {study_id}", partial(
            exam_alert_notice, study_id=study_id, threshold=self.settings.alert_suspicion))

    def _alert_image(self, image_id: int) -> Sends:
        """An image scored outside any exam (``records.alone_at_or_above``)."""
        return self._guarded(f"image {image_id}", partial(
            image_alert_notice, image_id=image_id, threshold=self.settings.alert_suspicion))

    def follow_up(self) -> FollowUpReport:
        """What the sweeper calls: deliver what is owed within MAMMO_NOTIFY_GIVE_UP_AFTER_S.

        Events no row records (a drop folder's day batch whose day is over; a process died
        between committing a result and claiming its notification; an exam result written
        on timeout by a report command) are sent now, and failed deliveries older than
        MAMMO_NOTIFY_RESEND_AFTER_S are tried again. A failed alert of a malignant-looking
        exam must not stay failed because the mail server was down for a minute. The report
        counts what this process sent (``Sends``). Never raises.
        """
        report = FollowUpReport()
        if not self.channels:
            return report
        try:
            with self.sessions() as session:
                # Rows are created and claimed on it, whatever this host's clock says.
                now = database_now(session)
                since = now - timedelta(seconds=self.settings.notify_give_up_after_s)
                owed = [records.owed(session, c.name, since=since, now=now,
                                     alert_threshold=self.settings.alert_suspicion,
                                     zone=self.settings.site_zone)
                        for c in self.channels]
                images = sorted({i for c in self.channels for i in records.owed_images(
                    session, c.name, since=since,
                    alert_threshold=self.settings.alert_suspicion)})
                batches = sorted({b for found, _ in owed for b in found})
                day_ends = _due_at_day_end(session, batches, self.settings.site_zone)
            for batch_id in batches:
                if sends := self._summarise(batch_id):
                    report.owed_batches += 1
                    report.count(sends)
                    if batch_id in day_ends:
                        report.day_summaries.append(batch_id)
            studies = sorted({s for _, found in owed for s in found})
            for sends in [*map(self._alert_exam, studies), *map(self._alert_image, images)]:
                if sends:
                    report.owed_alerts += 1
                    report.count(sends)
            if self.settings.notify_resend_after_s > 0:
                self._retry_failed(since, report)
        except Exception as exc:  # the sweeper goes on; the next sweep tries again
            log.warning("notification follow-up stopped: %s: %s", type(exc).__name__,
                        _first_line(exc))
        return report

    def _retry_failed(self, since: datetime, report: FollowUpReport) -> None:
        by_name = {channel.name: channel for channel in self.channels}
        with self.sessions() as session:
            taken = records.take_failed(
                session, list(by_name), since=since,
                retry_after=timedelta(seconds=self.settings.notify_resend_after_s))
            session.commit()
        report.retried = len(taken)
        self._own(row.id for row in taken)
        for n, row in enumerate(taken):
            if self._closing:  # the process stops: leave the rest to the next sweeper
                self._release([r.id for r in taken[n:]], "not re-sent: the worker stopped "
                              f"first; {_RESENT}")
                return
            with self.sessions() as session:
                notice = self._notice_again(session, row)
                if notice is None:
                    records.mark_obsolete(session, row.id, "no longer called for when "
                                          "retried (e.g. the exam was re-scored below the "
                                          "alert threshold)")
                    session.commit()
                    self._disown(row.id)
                    report.obsolete += 1
                    continue
            report.delivered += self._deliver(by_name[row.channel], notice, row.id)

    def _notice_again(self, session: Session, row: records.Retake) -> Notice | None:
        """The notice a taken-back row stands for, as the database reads now."""
        if row.event is Event.BATCH_COMPLETE and row.batch_id is not None:
            return self._batch(session, row.batch_id)
        if row.event is Event.EXAM_ALERT and row.study_id is not None:
            return exam_alert_notice(session, row.study_id, self.settings.alert_suspicion)
        if row.event is Event.EXAM_ALERT and row.image_id is not None:
            return image_alert_notice(session, row.image_id, self.settings.alert_suspicion)
        return None

    def _batch(self, session: Session, batch_id: int) -> Notice | None:
        batch = session.get(Batch, batch_id)
        due = (summary_due_at(batch.name, batch.finished_at, self.settings.site_zone)
               if batch else None)
        if due is None or due > database_now(session):  # the clock ``owed`` judges it on
            return None  # e.g. today's drop-folder batch: summarised once the day is over
        html, report_path = self._summary_page(session, batch_id)
        return batch_notice(session, batch_id, html=html, report_path=report_path)

    def _summary_page(self, session: Session, batch_id: int) -> tuple[str | None, Path | None]:
        """The HTML summary, also written beside the batch's exports; (None, None) if it
        cannot be made: the e-mail then goes without it rather than not at all."""
        try:
            from shared.reports.batch_summary import batch_report_path

            html = self.batch_html(session, batch_id)
            if not html:
                return None, None
            path = batch_report_path(self.settings, batch_id, "html")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(html, encoding="utf-8")
            return html, path
        except Exception as exc:
            session.rollback()
            log.warning("batch %d summary not attached: %s: %s", batch_id, type(exc).__name__,
                        _first_line(exc))
            return None, None

    def _guarded(self, what: str, build: Callable[[Session], Notice | None]) -> Sends:
        sends = Sends()
        try:
            with self.sessions() as session:
                notice = build(session)
        except Exception as exc:  # a notification never fails the batch
            log.warning("notifications for %s skipped after an error: %s: %s", what,
                        type(exc).__name__, _first_line(exc))
            return sends
        if notice is None:
            return sends
        for channel in self.channels:
            try:  # one channel's error never keeps the others from sending
                sent = self._send_once(channel, notice)
            except Exception as exc:
                log.warning("%s notification for %s skipped after an error: %s: %s",
                            channel.name, what, type(exc).__name__, _first_line(exc))
                continue
            if sent is not None:
                sends.delivered += sent
                sends.failed += not sent
        return sends

    def _send_once(self, channel: Channel, notice: Notice) -> bool | None:
        """Claim and send: whether it was delivered, None when it is not this call's to
        tell (another process's row, or handed off to this worker's sending thread)."""
        with self.sessions() as session:
            notification_id = records.claim(session, channel.name, notice)
            session.commit()
        if notification_id is None:
            return None  # another process (or an earlier run) owns this one
        self._own([notification_id])
        if self._handoff is None:
            return self._deliver(channel, notice, notification_id)
        job = Job(notification_id, partial(self._deliver_handed_off, channel, notice,
                                           notification_id, queued_at=time.monotonic()))
        if self._handoff.submit(channel.name, job):
            return None
        self._release([notification_id], f"not sent: {QUEUE_CAPACITY} {channel.name} "
                      "deliveries already waited in this worker (the receiver is slow or "
                      f"down); {_RESENT}")
        return False

    def _deliver_handed_off(self, channel: Channel, notice: Notice, notification_id: int, *,
                            queued_at: float) -> bool:
        waited = time.monotonic() - queued_at
        if waited > queue_wait_limit_s(self.policy, self.settings.notify_timeout_s):
            self._release([notification_id], f"not sent: it waited {waited:.0f} s in this "
                          f"worker behind earlier {channel.name} deliveries (the receiver is "
                          f"slow or down); {_RESENT}")
            return False
        return self._deliver(channel, notice, notification_id)

    def _deliver(self, channel: Channel, notice: Notice, notification_id: int) -> bool:
        """Send a claimed notification (with retries) and record the outcome."""
        delivery = deliver_with_retry(partial(_send, channel, notice), self.policy)
        with self.sessions() as session:
            records.record(session, notification_id, attempts=delivery.attempts,
                           error=delivery.error)
            session.commit()
        self._disown(notification_id)
        if delivery.ok:
            self._delivered_at = time.monotonic()
            log.info("%s notification %s for %s sent (%d attempt(s))", channel.name,
                     notice.event.value, notice.subject_key, delivery.attempts)
        else:
            log.warning("%s notification %s for %s FAILED after %d attempt(s): %s",
                        channel.name, notice.event.value, notice.subject_key,
                        delivery.attempts, delivery.error)
        return delivery.ok

    def close(self) -> None:
        """What a stopping process calls: deliveries in hand may finish while they succeed
        (up to one worst-case delivery without a success); those never started are recorded
        failed for the sweeper, and one line says what is left owed. Never raises."""
        self._closing = True
        patience = self.policy.longest_s(self.settings.notify_timeout_s)
        try:
            if self._handoff is not None:
                left = self._handoff.close(patience)
                released = self._release(left.never_started, "not sent: the worker stopped "
                                         f"before its turn; {_RESENT}", quiet=True)
            else:  # in-line senders in other threads (the sweeper's follow-up)
                released = 0
                self._wait_for_owned(patience)
        except Exception as exc:  # the process is stopping; a sweeper finds what is owed
            log.warning("notifications: could not record what this process leaves unsent: "
                        "%s: %s", type(exc).__name__, _first_line(exc))
            return
        with self._owned_lock:
            in_progress = len(self._owned)
        if released or in_progress:
            log.warning("notifications: this process stops with %d delivery(ies) unsent: %d "
                        "recorded failed (a worker's sweeper or `mammo recover` re-sends them "
                        "after MAMMO_NOTIFY_RESEND_AFTER_S), %d cut off mid-send and left "
                        "pending (taken over after %d min)", released + in_progress, released,
                        in_progress, records.STALE_AFTER.seconds // 60)

    def _wait_for_owned(self, patience_s: float) -> None:
        since = time.monotonic()
        while self._owned and time.monotonic() - max(since, self._delivered_at) <= patience_s:
            time.sleep(0.05)

    def _own(self, notification_ids: Iterable[int]) -> None:
        with self._owned_lock:
            self._owned.update(notification_ids)

    def _disown(self, notification_id: int) -> None:
        with self._owned_lock:
            self._owned.discard(notification_id)

    def _release(self, notification_ids: Sequence[int], reason: str, *,
                 quiet: bool = False) -> int:
        """Record claimed rows this process gives up on as failed, for the sweeper."""
        if not notification_ids:
            return 0
        with self.sessions() as session:
            released = records.release(session, notification_ids, reason)
            session.commit()
        with self._owned_lock:
            self._owned.difference_update(notification_ids)
        if not quiet:
            log.warning("%d notification(s) %s", len(notification_ids), reason)
        return released


def _send(channel: Channel, notice: Notice) -> None:
    """One attempt. An error that is not a delivery error (a message that cannot be built,
    a bug) is not retried but recorded as this row's failure, not left ``pending``."""
    try:
        channel.send(notice)
    except NotificationError:
        raise
    except Exception as exc:
        raise NotificationRejectedError(
            f"{channel.name} could not send: {type(exc).__name__}: {_first_line(exc)}") from None
