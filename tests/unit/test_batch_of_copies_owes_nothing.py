"""A batch whose every file was already known (copies only, no image of its own) owes no
summary.

``batch_notice`` makes none for it (nothing new to tell), so no notification row is ever
recorded; the follow-up's ``owed`` still counted it, and every sweep's worker log and every
`mammo recover` said "notifications: N batch summary(ies) ... were owed; ... 0 delivered",
for as long as the give-up window lasted. Both now read one rule (``records.summarised``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from producer.embedded_run import run_embedded
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.notify import Notifier
from shared.notify.content import batch_notice
from shared.notify.message import Event, Notice
from shared.synthetic import make_exam_set


class _Inbox:
    name = "inbox"

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.notices.append(notice)


def test_a_batch_of_copies_alone_is_neither_summarised_nor_owed(
        settings: Settings, tmp_path: Path) -> None:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    make_exam_set(tmp_path / "in", 1, seed=21)
    run_embedded(settings, sessions, [tmp_path / "in"], name="first")  # no channel yet
    run_embedded(settings, sessions, [tmp_path / "in"], name="again")  # every file known
    with sessions() as session:
        batches = {name: id_ for name, id_ in session.execute(select(Batch.name, Batch.id))}
        own = {b: session.scalar(select(Image.id).where(Image.batch_id == b).limit(1))
               for b in batches.values()}
        finished = session.scalar(select(Batch.finished_at)
                                  .where(Batch.id == batches["again"]))
        notice = batch_notice(session, batches["again"], html=None, report_path=None)
    assert own[batches["first"]] is not None and own[batches["again"]] is None
    assert finished is not None and notice is None

    inbox = _Inbox()
    notifier = Notifier(settings.model_copy(update={"alert_suspicion": 10}), sessions,
                        channels=[inbox])
    first, second, third = (notifier.follow_up() for _ in range(3))
    engine.dispose()

    assert [(n.event, n.batch_id) for n in inbox.notices] == [
        (Event.BATCH_COMPLETE, batches["first"])]
    assert first.owed_batches == 1  # the first batch's summary, sent now
    assert (second.owed_batches, third.owed_batches) == (0, 0)  # the copies' batch: never
