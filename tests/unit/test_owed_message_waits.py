"""How long an image owed a message (none sent since it was queued) is left to its sender,
and from when `mammo status` counts its wait.

A Redis restart cuts the sweeper's wait short to the broker's uptime: a message sent before
it is gone. That cut was applied to images owed a message too, which the sweeper sends at
any broker depth: for ten minutes after a restart every sweep re-sent images whose sender
was still at work (a long submit still registering, a re-score between its reopen and its
send), each with a warning that its message was lost. None of theirs was in the broker; they
wait the full MAMMO_REQUEUE_AFTER_S.

A send that failed (``owe_message``) erased when the image was put back in the queue, so
`mammo status` counted a re-score whose re-send failed as queued since its registration,
days before. It keeps that time now, and the next sweep still sends the image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import producer.cli.commands_query
import shared.recovery
import worker.sweeper
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.schema import Image
from shared.enums import ImageState, Priority
from shared.errors import BrokerUnavailableError
from shared.queries import system_health
from shared.queue import create_celery_app
from shared.recovery import requeue, sweep
from tests.helpers.cli import run_cli
from tests.helpers.db import queued_batch, schema_sessions
from worker.sweeper import SweepLoop

RESTARTED_S_AGO = 30.0  # Redis came back without its data half a minute ago


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _set(sessions: sessionmaker[Session], ids: list[int], **ago: timedelta | None) -> None:
    """Stamp each named column of ``ids`` that long before the database's now (None: NULL)."""
    with sessions() as session:
        now = database_now(session)
        session.execute(update(Image).where(Image.id.in_(ids)).values(
            **{column: None if delta is None else now - delta for column, delta in ago.items()}))
        session.commit()


def _sent_at(sessions: sessionmaker[Session], ids: list[int]) -> list[object]:
    with sessions() as session:
        return list(session.scalars(select(Image.enqueued_at).where(Image.id.in_(ids))
                                    .order_by(Image.id)))


def _rescored_minutes_ago(sessions: sessionmaker[Session], name: str, minutes: int) -> list[int]:
    """Scored three days ago; reopened by `mammo rescore` ``minutes`` ago, not sent yet."""
    _, ids = queued_batch(sessions, name, 2)
    with sessions() as session:
        lifecycle.mark_done(session, ids)
        session.commit()
    _set(sessions, ids, created_at=timedelta(days=3), enqueued_at=timedelta(days=3))
    with sessions() as session:
        assert lifecycle.reopen(session, ids) == ids
        session.commit()
    _set(sessions, ids, requeued_at=timedelta(minutes=minutes))
    return ids


def test_after_a_broker_restart_the_sweeper_leaves_owed_images_to_their_sender(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, app = broker
    monkeypatch.setattr(worker.sweeper, "broker_uptime_s", lambda _app: RESTARTED_S_AGO)
    monkeypatch.setattr(producer.cli.commands_query, "broker_uptime_s",
                        lambda _app: RESTARTED_S_AGO)
    _, lost = queued_batch(sessions, "sent before the restart", 2)
    _set(sessions, lost, created_at=timedelta(hours=1), enqueued_at=timedelta(minutes=5))
    _, registering = queued_batch(sessions, "a long submit", 2)  # its send still to come
    _set(sessions, registering, created_at=timedelta(minutes=3))
    rescoring = _rescored_minutes_ago(sessions, "a rescore", 2)

    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=settings.database_url, broker_url=settings.broker_url)
    loop = SweepLoop(app, settings)
    loop.run_once()
    assert loop.follow_up is not None
    loop.follow_up.join(timeout=30)

    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert (health["lost_after_s"], health["messages_lost"], health["messages_owed"]) == (
        int(RESTARTED_S_AGO), 2, 0)
    assert None not in _sent_at(sessions, lost)  # its message went with the old broker
    assert _sent_at(sessions, registering + rescoring) == [None] * 4


def test_a_rescore_whose_send_failed_keeps_its_wait_and_is_sent_by_the_next_sweep(
        each_backend_sessions: sessionmaker[Session], settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = each_backend_sessions
    ids = _rescored_minutes_ago(sessions, "rescore", 5)

    def broker_away(app: Celery, groups: Mapping[Priority, Sequence[int]], *,
                    chunk_size: int) -> int:
        raise BrokerUnavailableError("Cannot reach the message broker: connection refused")

    monkeypatch.setattr(shared.recovery, "enqueue_by_priority", broker_away)
    app = create_celery_app(settings)
    with pytest.raises(BrokerUnavailableError):
        requeue(sessions, app, settings, ids)  # the rescore's own send
    with sessions() as session:
        age = system_health(session, lease_s=settings.claim_lease_s)["oldest_queued_age_s"]
        young = lifecycle.queued_since(  # what `mammo recover` says it left alone
            session, database_now(session) - timedelta(seconds=settings.requeue_after_s))

    report = sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s,
                   dry_run=True)

    assert age is not None and 4 * 60 <= age < 10 * 60  # not three days
    assert young == 0  # the sweep sends them: none is left alone
    assert (report.owed, report.stale_queued) == (ids, ids)
    with sessions() as session:
        assert set(session.scalars(select(Image.state).where(Image.id.in_(ids)))) == {
            ImageState.QUEUED.value}
