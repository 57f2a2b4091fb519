"""`mammo status` counts queued images as the sweeper does: from when they were last put in
the queue, and those owed a message whatever the broker holds.

An image put back in the queue (a re-score, a claim handed back) and not sent yet is owed
a message, and waits from that moment (``lifecycle.waiting_since``); the sweeper sends it
whatever the broker holds, none of its messages waiting there. The health lines read
its registration instead (a re-score of last week's images showed them queued for a
week), and counted images owed a message only while the broker queue was empty: on a busy
night they were never named, though the next sweep sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.schema import Image
from shared.enums import Priority
from shared.queries import system_health
from shared.queue import enqueue_chunks, queue_depth
from shared.recovery import sweep
from tests.helpers.cli import run_cli
from tests.helpers.db import queued_batch, schema_sessions

NIGHT = 5  # routine messages waiting in the broker: a busy night


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _registered_long_ago(sessions: sessionmaker[Session], ids: list[int],
                         ago: timedelta) -> None:
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(created_at=database_now(session) - ago))
        session.commit()


def test_the_oldest_queued_image_of_a_rescore_waits_from_its_reopening(
        each_backend_sessions: sessionmaker[Session]) -> None:
    sessions = each_backend_sessions
    _, ids = queued_batch(sessions, "last week", 2)
    with sessions() as session:
        assert lifecycle.mark_done(session, ids) == ids
        session.commit()
    _registered_long_ago(sessions, ids, timedelta(days=7))
    with sessions() as session:  # `mammo rescore`, its send still to come
        assert lifecycle.reopen(session, ids) == ids
        session.commit()
        age = system_health(session, lease_s=120)["oldest_queued_age_s"]
    assert age is not None and 0 <= age < 60


def test_status_names_images_owed_a_message_on_a_busy_night_and_what_the_sweeper_does(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, app = broker
    _, owed = queued_batch(sessions, "send failed", 2)  # registered, never sent
    _registered_long_ago(sessions, owed, timedelta(hours=1))
    _, night = queued_batch(sessions, "night", NIGHT)  # sent a moment ago, still waiting
    enqueue_chunks(app, night, chunk_size=1, priority=Priority.ROUTINE)
    with sessions() as session:
        lifecycle.mark_enqueued(session, night)
        session.commit()
    assert queue_depth(app) == NIGHT
    # The sweeper's own rule: it sends those two at its next pass, the queue as it is.
    swept = sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s,
                  dry_run=True)
    assert (swept.owed, swept.sent_before) == (owed, [])

    env = {"database_url": settings.database_url, "broker_url": settings.broker_url}
    result = run_cli(["status"], monkeypatch, tmp_path, **env)
    assert ("warning: 2 image(s) queued for over 600 s with no message sent (a send that "
            "failed: the broker away, or a producer stopped before its send): a worker's "
            "sweeper sends them at its next pass (every MAMMO_SWEEP_INTERVAL_S) whatever "
            "the broker queue holds") in result.stderr
    assert "probably lost" not in result.stderr
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path, **env)
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert (health["queue_depth"], health["messages_lost"], health.get("messages_owed"),
            health["lost_after_s"]) == (NIGHT, 0, 2, settings.requeue_after_s)
