"""The sweeper, `mammo status` and a submit's send stamp work on more images than one
PostgreSQL statement takes bound parameters (65,535).

``find_stuck`` sent every stale id back in one IN list, and ``mark_enqueued`` stamped every
id in one: with 66,000 images queued a night, the sweeper failed every pass (sending
nothing, not even a dead worker's claims), `mammo status` exited 7 saying the database
refused, and `mammo submit` of that many files sent every message and then failed to stamp
them, so that all looked owed and would be sent twice. Real PostgreSQL: SQLite's limit is
another, and the rows are inserted by the database itself to keep the test short.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import ImageState, Priority
from shared.queue import create_celery_app
from shared.recovery import find_stuck, sweep
from tests.helpers.cli import run_cli

NIGHT = 66_000  # more than 65,535: one IN list of them all is refused
DEAD, OWED = 3, 2  # claimed by a worker that died, registered and never sent


@pytest.fixture
def night(postgres_url: str, settings: Settings,
          redis_url: str) -> Iterator[tuple[Settings, sessionmaker[Session], Celery]]:
    wired = settings.model_copy(update={"database_url": postgres_url, "broker_url": redis_url})
    engine = create_db_engine(wired)
    ensure_schema(engine)
    app = create_celery_app(wired)
    yield wired, make_session_factory(engine), app
    app.close()
    engine.dispose()


def _queued_night(sessions: sessionmaker[Session], n: int) -> list[int]:
    """``n`` images registered an hour ago and sent 20 minutes ago: their messages lost."""
    batch_id = create_batch(sessions, name="night", priority=Priority.ROUTINE,
                            mode="distributed")
    with sessions() as session:
        session.execute(text(
            "INSERT INTO images (identity, batch_id, source, format, state, attempts, "
            "created_at, enqueued_at) SELECT 'sha256:night-' || g, :batch, "
            "'/in/night/' || g || '.png', 'png', 'queued', 0, now() - interval '1 hour', "
            "now() - interval '20 minutes' FROM generate_series(1, :n) AS g"),
            {"batch": batch_id, "n": n})
        session.commit()
        return sorted(session.scalars(select(Image.id).where(Image.batch_id == batch_id)))


def test_a_night_of_over_65535_queued_images_is_found_swept_and_stamped(
        night: tuple[Settings, sessionmaker[Session], Celery], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    settings, sessions, app = night
    ids = _queued_night(sessions, NIGHT)
    dead, owed = ids[:DEAD], ids[DEAD:DEAD + OWED]
    with sessions() as session:
        lifecycle.claim(session, dead, token="dead-worker", lease_s=settings.claim_lease_s)
        session.execute(update(Image).where(Image.id.in_(dead)).values(
            claimed_at=database_now(session) - timedelta(hours=1)))
        session.execute(update(Image).where(Image.id.in_(owed)).values(enqueued_at=None))
        session.commit()

    with sessions() as session:
        found = find_stuck(session, settings, queued_older_than_s=settings.requeue_after_s)
    swept = sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s,
                  dry_run=True)  # the broker queue is empty: every one would be re-sent
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=settings.database_url, broker_url=settings.broker_url)

    for report in (found, swept):
        assert report.expired_claims == dead
        assert report.owed == owed
        assert report.stale_queued == ids[DEAD:]
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert (health["stale_claims"], health["messages_lost"], health["messages_owed"]) == (
        DEAD, NIGHT - DEAD - OWED, OWED)


def test_a_send_of_over_65535_images_is_stamped_sent(
        night: tuple[Settings, sessionmaker[Session], Celery]) -> None:
    """What `mammo submit` and every re-send do once the messages are out."""
    _, sessions, _ = night
    ids = _queued_night(sessions, NIGHT)
    with sessions() as session:
        session.execute(update(Image).values(enqueued_at=None))  # registered, not yet sent
        session.commit()
        sent = database_now(session)

    with sessions() as session:
        lifecycle.mark_enqueued(session, ids, sent)
        session.commit()

    with sessions() as session:
        stamped = session.scalar(select(func.count()).where(
            Image.state == ImageState.QUEUED.value, Image.enqueued_at == sent))
        assert stamped == NIGHT
        assert lifecycle.never_sent(session, ids) == []
