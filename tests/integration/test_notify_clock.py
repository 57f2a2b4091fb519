"""Notification claims are stamped and judged on the database's clock, not each host's.

Workers, their sweepers, `mammo run` and `mammo recover` claim notification rows from
several hosts. Judged on its own clock, a host running more than STALE_AFTER (15 min)
ahead took over a row another process had claimed a minute before and was still sending:
the same alert e-mailed twice. One running behind took a dead sender's row over late, held
back a failed delivery's re-send, and skipped a finished batch's summary as not yet due.
Here a process's clock is set 20 minutes off (every ``utcnow`` the notification code reads)
against a real PostgreSQL server, whose clock is the one all of them share.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import clock
from shared.db.schema import Batch, Notification
from shared.notify import Notifier, dispatch, records
from shared.notify.message import Event, Notice, delivery_key
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by, server_now
from tests.helpers.db import queued_batch, schema_sessions

SKEW = timedelta(minutes=20)
assert SKEW > records.STALE_AFTER  # off by more than a whole claim
CHANNEL = "webhook"


@pytest.fixture
def settings(postgres_url: str) -> Settings:
    return Settings(database_url=postgres_url, broker_url=None,  # type: ignore[call-arg]
                    notify_resend_after_s=600, _env_file=None)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


class _Receiver:
    """A channel that takes every delivery: what it was sent, in order."""

    name = CHANNEL

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice.subject_key)


def _notifier(settings: Settings, sessions: sessionmaker[Session],
              receiver: _Receiver) -> Notifier:
    return Notifier(settings, sessions, channels=[receiver], batch_html=lambda _s, _b: None)


def _host_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """This process's clock, as every module that claims or judges notifications reads
    it, is ``offset`` away from the database server's."""
    host_clock_off_by(monkeypatch, offset, (records, dispatch, clock))


def _finished_batch(sessions: sessionmaker[Session], name: str) -> int:
    """A batch that finished two minutes ago by the server's clock: its summary is due."""
    batch_id, _ = queued_batch(sessions, name, 1)
    with sessions() as session:
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(finished_at=func.now() - timedelta(minutes=2)))
        session.commit()
    return batch_id


def _claimed_by_another(sessions: sessionmaker[Session], batch_id: int, *, seconds_ago: int,
                        failed: bool = False) -> int:
    """The batch's notification row, claimed (or failed, after 4 attempts) ``seconds_ago``
    by the server's clock by a process with the server's time."""
    notice = Notice(Event.BATCH_COMPLETE, f"batch:{batch_id}", "subject", "text", {},
                    batch_id=batch_id, delivery_key=delivery_key("batch", batch_id))
    with sessions() as session:
        notification_id = records.claim(session, CHANNEL, notice)
        assert notification_id is not None
        if failed:
            records.record(session, notification_id, attempts=4, error="503 from the receiver")
        session.execute(update(Notification).where(Notification.id == notification_id)
                        .values(claimed_at=func.now() - timedelta(seconds=seconds_ago)))
        session.commit()
    return notification_id


def _rows(sessions: sessionmaker[Session]) -> dict[int | None, tuple[str, int, datetime | None]]:
    """Each batch's notification (status, attempts, sent_at)."""
    with sessions() as session:
        return {row.batch_id: (row.status, row.attempts, as_utc(row.sent_at))
                for row in session.execute(select(Notification.batch_id, Notification.status,
                                                  Notification.attempts, Notification.sent_at))}


def test_a_notifier_running_ahead_leaves_a_live_senders_claim_and_a_fresh_failure_alone(
        settings: Settings, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    live, failed, own = (_finished_batch(sessions, name) for name in ("live", "failed", "own"))
    _claimed_by_another(sessions, live, seconds_ago=60)  # being sent now, by a live worker
    _claimed_by_another(sessions, failed, seconds_ago=30, failed=True)  # re-sent after 600 s

    _host_clock_off_by(monkeypatch, SKEW)
    receiver = _Receiver()
    notifier = _notifier(settings, sessions, receiver)
    notifier.batches_finished([live, failed, own])  # e.g. a redelivered task's messages
    report = notifier.follow_up()  # this host's sweeper
    assert receiver.sent == [f"batch:{own}"]  # the other two are not sent a second time
    assert (report.owed_batches, report.retried) == (0, 0)
    with sessions() as session:  # `mammo status --health`: one being sent, one failed
        assert records.undelivered(session, give_up_after=timedelta(days=1)) == (
            records.Undelivered(failed=1, pending=1))
    rows = _rows(sessions)
    assert (rows[live][:2], rows[failed][:2]) == (("pending", 0), ("failed", 4))
    # Its own delivery is stamped on the server's clock: not 20 minutes into the future.
    sent_at = rows[own][2]
    assert rows[own][:2] == ("sent", 1) and sent_at is not None
    assert abs(sent_at - server_now(sessions)) < timedelta(seconds=30)


def test_a_notifier_running_behind_takes_over_a_dead_senders_claim_and_sends_what_is_due(
        settings: Settings, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    stale_s = int(records.STALE_AFTER.total_seconds()) + 60
    redelivered, swept, owed = (_finished_batch(sessions, n) for n in ("redo", "swept", "owed"))
    for batch_id in (redelivered, swept):  # their sender died 16 minutes ago, mid-send
        _claimed_by_another(sessions, batch_id, seconds_ago=stale_s)

    _host_clock_off_by(monkeypatch, -SKEW)
    with sessions() as session:  # nobody is sending them: `mammo status` says failed
        assert records.undelivered(session, give_up_after=timedelta(days=1)) == (
            records.Undelivered(failed=2, pending=0))
    receiver = _Receiver()
    notifier = _notifier(settings, sessions, receiver)
    notifier.batches_finished([redelivered])  # a redelivered task's message takes it over
    report = notifier.follow_up()  # the sweeper: the abandoned row, and the unclaimed batch
    assert receiver.sent == [f"batch:{redelivered}", f"batch:{owed}", f"batch:{swept}"]
    assert (report.owed_batches, report.retried, report.delivered) == (1, 1, 1)
    server_time = server_now(sessions)
    for status, attempts, sent_at in _rows(sessions).values():
        assert (status, attempts) == ("sent", 1) and sent_at is not None
        assert abs(sent_at - server_time) < timedelta(seconds=30)  # not 20 minutes ago


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_runs_unsent_count_holds_whatever_the_two_clocks_say(
        offset: timedelta, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`mammo run`'s closing line: the notifications claimed since it started (on its own
    clock) and not delivered, while claims are stamped on the server's."""
    before = _finished_batch(sessions, "before")
    _claimed_by_another(sessions, before, seconds_ago=300)  # an earlier run's, left pending
    _host_clock_off_by(monkeypatch, offset)
    started = records.utcnow()
    this_run = _finished_batch(sessions, "this run")
    _claimed_by_another(sessions, this_run, seconds_ago=0)  # its sender was cut short
    with sessions() as session:
        assert records.unsent_since(session, started) == 1
