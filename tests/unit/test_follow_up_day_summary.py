"""A drop folder's day summary, sent by the follow-up once its day is over, is routine.

Nothing sends a day batch's summary before its day ends (``shared.batches.summary_due_at``):
the sweeper's follow-up does, by design. At every midnight each worker logged it as a
failure, "WARNING worker.sweeper: follow-up: ... 1 batch summary(ies) and 0 alert(s) were
owed; 0 failed delivery(ies) retried, 0 delivered, ...", right after the deliveries were
logged "sent". It is now one INFO line naming the batch; a WARNING stays for what was
missed (a summary whose worker died before sending it, a failed delivery), and its counts
say what went.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import watch_batch_name
from shared.config import Settings
from shared.db.schema import Batch
from shared.errors import NotificationRejectedError
from shared.notify import Notifier, records
from shared.notify.message import Notice
from shared.recovery import BackgroundFollowUp
from tests.helpers.db import queued_batch, schema_sessions

LOG = "mammo.test.sweeper"


class _Inbox:
    name = "inbox"

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.notices: list[Notice] = []

    def send(self, notice: Notice) -> None:
        if self.refuse:
            raise NotificationRejectedError("inbox: 550 mailbox unavailable")
        self.notices.append(notice)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'mammo.db'}", broker_url=None,  # type: ignore[call-arg]
                    report_dir=tmp_path / "reports", notify_retries=0, _env_file=None)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _finished(sessions: sessionmaker[Session], name: str, at: datetime) -> int:
    """A batch of one image that finished at ``at``, its summary never sent."""
    batch_id, _ = queued_batch(sessions, name, 1)
    with sessions() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(finished_at=at))
        session.commit()
    return batch_id


def _day_batch_of_yesterday(sessions: sessionmaker[Session]) -> int:
    """Yesterday's (UTC) drop-folder batch, last finished at 23:00: due at midnight."""
    midnight = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    name = watch_batch_name(Path("/srv/incoming"), (midnight - timedelta(days=1)).date())
    return _finished(sessions, name, midnight - timedelta(hours=1))


def _follow_up(settings: Settings, sessions: sessionmaker[Session], inbox: _Inbox,
               caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """A worker's sweeper's follow-up pass; what it logged, (level, message)."""
    notifier = Notifier(settings, sessions, channels=[inbox], batch_html=lambda s, b: None)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOG):
        BackgroundFollowUp(settings, notifier, logging.getLogger(LOG)).run()
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOG]


def test_a_day_summary_that_falls_due_and_goes_is_one_info_line(
        settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    batch_id = _day_batch_of_yesterday(sessions)
    inbox = _Inbox()

    logged = _follow_up(settings, sessions, inbox, caplog)

    assert [n.batch_id for n in inbox.notices] == [batch_id]
    assert logged == [("INFO", f"follow-up: notifications: day summary of batch {batch_id} sent")]
    assert _follow_up(settings, sessions, inbox, caplog) == []  # the next pass: nothing


def test_a_summary_its_worker_died_before_sending_is_a_warning_counting_what_went(
        settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    day = _day_batch_of_yesterday(sessions)
    submitted = _finished(sessions, "night", datetime.now(UTC) - timedelta(minutes=2))
    inbox = _Inbox()

    [(level, line)] = _follow_up(settings, sessions, inbox, caplog)

    assert sorted(n.batch_id for n in inbox.notices) == [day, submitted]
    assert level == "WARNING"
    assert line.startswith("follow-up: 0 timed-out exam(s) given their result; notifications: "
                           "2 batch summary(ies) (1 of them day summaries, due once their day "
                           "was over) and 0 alert(s) were owed (2 delivery(ies) sent, 0 failed);"
                           ), line


def test_a_day_batch_finished_after_its_day_was_over_was_its_workers_to_summarise(
        settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    """A late file finished the batch after midnight: its summary was due at once, from the
    worker that finished it (which died before sending it)."""
    finished = datetime.now(UTC) - timedelta(hours=2)
    name = watch_batch_name(Path("/srv/incoming"), finished.date() - timedelta(days=1))
    _finished(sessions, name, finished)

    [(level, line)] = _follow_up(settings, sessions, _Inbox(), caplog)

    assert level == "WARNING"
    assert "1 batch summary(ies) and 0 alert(s) were owed (1 delivery(ies) sent" in line


def test_a_day_summary_that_fails_to_go_is_a_warning(
        settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    _day_batch_of_yesterday(sessions)

    [(level, line)] = _follow_up(settings, sessions, _Inbox(refuse=True), caplog)

    assert level == "WARNING"
    assert "were owed (0 delivery(ies) sent, 1 failed)" in line


def test_a_summary_another_sweeper_claimed_first_is_not_this_ones_to_report(
        settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' sweepers at midnight: both read the summary owed, one claims and sends
    it; the other sent nothing and says nothing."""
    batch_id = _day_batch_of_yesterday(sessions)
    first, second = _Inbox(), _Inbox()
    assert _follow_up(settings, sessions, first, caplog)  # the one that claimed it
    monkeypatch.setattr(records, "owed", lambda *a, **k: ([batch_id], []))  # read before

    assert _follow_up(settings, sessions, second, caplog) == []
    assert ([n.batch_id for n in first.notices], second.notices) == ([batch_id], [])
