"""The ``notifications`` table: claim by insert-or-nothing, then record the outcome.

Whoever inserts the (channel, event, subject) row sends; everyone else (another worker, a
redelivered message, a second run of the hook) finds it taken and does nothing. A claim left
``pending`` by a process that died mid-send may be taken over after ``STALE_AFTER``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, update
from sqlalchemy.orm import Session

from shared.db.schema import Notification
from shared.db.upsert import insert_missing
from shared.notify.message import Notice
from shared.timeutil import utcnow

PENDING, SENT, FAILED = "pending", "sent", "failed"
# Far longer than one delivery can take (timeouts x attempts + backoff), so a live sender is
# never overtaken.
STALE_AFTER = timedelta(minutes=15)


def claim(session: Session, channel: str, notice: Notice) -> int | None:
    """The id of the row this caller now owns, or None when it is someone else's."""
    now = utcnow()
    ids = insert_missing(session, Notification, [{
        "channel": channel, "event": notice.event.value, "subject_key": notice.subject_key,
        "batch_id": notice.batch_id, "study_id": notice.study_id, "status": PENDING,
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
    session.execute(
        update(Notification).where(Notification.id == notification_id).values(
            status=SENT if error is None else FAILED,
            attempts=Notification.attempts + attempts,
            last_error=None if error is None else error[:2000],
            sent_at=utcnow() if error is None else None,
        ),
        execution_options={"synchronize_session": False},
    )
