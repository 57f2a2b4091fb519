"""Send the notifications an event calls for, once, and never let a failure escape.

Delivery runs in the process that saw the event (the worker that finished the batch or
scored the exam), right after its transaction committed. The predictions are already safe by
then, so a slow or dead mail server can only delay the task's acknowledgement, bounded by
MAMMO_NOTIFY_TIMEOUT_S x attempts plus the capped backoff; nothing is ever raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.notify import records
from shared.notify.content import batch_notice, exam_alert_notice
from shared.notify.mail import EmailChannel
from shared.notify.message import Notice
from shared.notify.retry import RetryPolicy, deliver_with_retry
from shared.notify.webhook import WebhookChannel

log = logging.getLogger(__name__)

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


class Notifier:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *,
                 batch_html: BatchHtml | None = None,
                 channels: Sequence[Channel] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.batch_html = batch_html or summary_html(settings)
        self.channels = list(channels_for(settings) if channels is None else channels)
        self.policy = RetryPolicy.from_settings(settings)

    def batches_finished(self, batch_ids: Iterable[int]) -> None:
        for batch_id in sorted(set(batch_ids)) if self.channels else ():
            self._guarded(f"batch {batch_id}", partial(self._batch, batch_id=batch_id))

    def exams_changed(self, study_ids: Iterable[int]) -> None:
        threshold = self.settings.alert_suspicion
        for study_id in sorted(set(study_ids)) if self.channels else ():
            self._guarded(f"study {study_id}", partial(exam_alert_notice, study_id=study_id,
                                                       threshold=threshold))

    def _batch(self, session: Session, batch_id: int) -> Notice | None:
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
                        (str(exc).splitlines() or [""])[0][:300])
            return None, None

    def _guarded(self, what: str, build: Callable[[Session], Notice | None]) -> None:
        try:
            with self.sessions() as session:
                notice = build(session)
            if notice is not None:
                for channel in self.channels:
                    self._send_once(channel, notice)
        except Exception as exc:  # a notification never fails the batch
            first_line = (str(exc).splitlines() or [""])[0][:300]
            log.warning("notifications for %s skipped after an error: %s: %s", what,
                        type(exc).__name__, first_line)

    def _send_once(self, channel: Channel, notice: Notice) -> None:
        with self.sessions() as session:
            notification_id = records.claim(session, channel.name, notice)
            session.commit()
        if notification_id is None:
            return  # another process (or an earlier run) owns this one
        delivery = deliver_with_retry(lambda: channel.send(notice), self.policy)
        with self.sessions() as session:
            records.record(session, notification_id, attempts=delivery.attempts,
                           error=delivery.error)
            session.commit()
        if delivery.ok:
            log.info("%s notification %s for %s sent (%d attempt(s))", channel.name,
                     notice.event.value, notice.subject_key, delivery.attempts)
        else:
            log.warning("%s notification %s for %s FAILED after %d attempt(s): %s",
                        channel.name, notice.event.value, notice.subject_key,
                        delivery.attempts, delivery.error)
