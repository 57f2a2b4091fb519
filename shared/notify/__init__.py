"""Notifications: e-mail (SMTP) and signed webhooks when a batch completes or an exam is
scored at or above the alert threshold. Exactly once per channel, event and subject (the
``notifications`` table decides); a failed delivery is recorded and never fails a batch."""

from shared.notify.dispatch import BatchHtml, FollowUpReport, Notifier

__all__ = ["BatchHtml", "FollowUpReport", "Notifier"]
