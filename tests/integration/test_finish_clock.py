"""Images' and batches' finish times are stamped on the database's clock, the one they are
judged on.

A batch's summary is due when it finished (``summary_due_at``), judged against the
database's clock by the notifier. Stamped on the finishing worker's clock, a worker host
running ahead made every batch it finished look finished in the future: its immediate
summary was skipped as not yet due, and went out only with a later sweep. Image finishes
are judged by the same rules (`mammo status`'s "being worked on", a resubmitted file's
"written since it failed"). Here the worker's clock (every ``utcnow`` the lifecycle and
notification code reads) is set 20 minutes off a real PostgreSQL server's.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.clock import database_now
from shared.db.schema import Batch, Image
from shared.enums import ErrorCode
from shared.notify import Notifier, dispatch, records
from shared.notify.message import Notice
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by
from tests.helpers.db import queued_batch, schema_sessions

SKEW = timedelta(minutes=20)
NEAR = timedelta(seconds=30)


@pytest.fixture
def settings(postgres_url: str) -> Settings:
    return Settings(database_url=postgres_url, broker_url=None,  # type: ignore[call-arg]
                    _env_file=None)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


class _Receiver:
    name = "webhook"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice.subject_key)


def _worker_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    host_clock_off_by(monkeypatch, offset, (lifecycle, records, dispatch, clock))


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_batch_a_worker_finishes_is_summarised_at_once_whatever_its_clock(
        settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch,
        offset: timedelta) -> None:
    batch_id, ids = queued_batch(sessions, "night", 2)
    _worker_clock_off_by(monkeypatch, offset)
    with sessions() as session:  # the worker saves its chunk, then stamps the batch
        claimed = lifecycle.claim(session, ids, token="worker", lease_s=120)
        assert len(claimed) == 2
        assert lifecycle.mark_done(session, ids[:1], token="worker") == ids[:1]
        assert lifecycle.mark_failed(session, ids[1], ErrorCode.UNREADABLE, "damaged",
                                     token="worker")
        session.commit()
    with sessions() as session:
        assert lifecycle.finish_batches(session, [batch_id]) == [batch_id]
        session.commit()
    receiver = _Receiver()
    notifier = Notifier(settings, sessions, channels=[receiver],
                        batch_html=lambda _s, _b: None)
    notifier.batches_finished([batch_id])  # what the worker does next
    assert receiver.sent == [f"batch:{batch_id}"]

    with sessions() as session:
        server_now = database_now(session)
        stamps = [*session.execute(select(Image.finished_at)).scalars(),
                  session.execute(select(Batch.finished_at)).scalar_one()]
    for stamp in stamps:
        moment = as_utc(stamp)
        assert moment is not None and abs(moment - server_now) < NEAR
