"""An urgent message lost while a routine backlog waits is re-sent and reported, through
real Redis priority lists and PostgreSQL.

The probe: 2,000 routine images submitted, then 4 urgent ones; a worker SIGKILLed as it
received the urgent message (its child still loading the model), which kombu kept in its
unacked hash for its 45 min visibility timeout. The replacement worker ran routine chunks
for 240 s and more while the urgent images stayed queued: every sweep saw routine messages
in the broker and left every long-queued image alone, `mammo status --health` said
``messages_lost: 0``, and `mammo recover` left them alone as younger than its wait.

Here the kill is real (a process that takes the next message without acking it and is
SIGKILLed); the waits are stamped back in time rather than waited for.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import producer.cli.commands_db
import producer.cli.commands_query
import worker.sweeper
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.queue import QUEUE_NAME, create_celery_app, enqueue_chunks
from tests.helpers.cli import run_cli
from tests.helpers.db import queued_batch
from worker.sweeper import SweepLoop

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROUTINE_LIST, URGENT_LIST = f"{QUEUE_NAME}:5", QUEUE_NAME  # kombu's priority 5 and 0
# Takes the next message as a worker does (the urgent one: Redis serves priority 0 first),
# says which images it holds, and dies before acking it.
RECEIVE_AND_DIE = """
import json, os, signal, sys
from shared.config import Settings
from shared.queue import QUEUE_NAME, create_celery_app
app = create_celery_app(Settings(database_url="sqlite:///unused.db", broker_url=sys.argv[1],
                                 _env_file=None))
with app.connection_for_read() as conn:
    message = conn.channel().basic_get(QUEUE_NAME, no_ack=False)
    print(json.dumps(message.decode()[0][0]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def wiring(postgres_url: str, redis_url: str,
           tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session], Celery]]:
    settings = Settings(database_url=postgres_url, broker_url=redis_url, chunk_size=4,
                        report_dir=tmp_path / "reports", _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    app = create_celery_app(settings)
    yield settings, make_session_factory(engine), app
    app.close()
    engine.dispose()


@pytest.fixture(autouse=True)
def _broker_up_for_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """The waits are the settings' own: a Redis started minutes ago (a fresh CI) would cut
    them to its uptime (``lost_message_age_s``), a rule of its own."""
    for module in (worker.sweeper, producer.cli.commands_query, producer.cli.commands_db):
        monkeypatch.setattr(module, "broker_uptime_s", lambda _app: 86_400.0)


def _sent(wiring: tuple[Settings, sessionmaker[Session], Celery], name: str, n: int,
          priority: Priority, ago: timedelta) -> list[int]:
    """A batch of ``n`` queued images whose messages were sent ``ago``, and are in Redis."""
    settings, sessions, app = wiring
    _, ids = queued_batch(sessions, name, n, priority)
    enqueue_chunks(app, ids, chunk_size=settings.chunk_size, priority=priority)
    with sessions() as session:
        lifecycle.mark_enqueued(session, ids, database_now(session) - ago)
        session.commit()
    return ids


def _worker_killed_holding_the_next_message(settings: Settings) -> list[int]:
    died = subprocess.run([sys.executable, "-c", RECEIVE_AND_DIE, str(settings.broker_url)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr
    return sorted(json.loads(died.stdout))


def _lists(settings: Settings) -> tuple[int, int, int]:
    """(urgent messages, routine messages, messages held unacked) in Redis."""
    client = redis.Redis.from_url(str(settings.broker_url))
    try:
        return client.llen(URGENT_LIST), client.llen(ROUTINE_LIST), client.hlen("unacked")
    finally:
        client.close()


def _waiting_since(sessions: sessionmaker[Session], ids: list[int]) -> dict[int, object]:
    with sessions() as session:
        rows = session.execute(select(Image.id, Image.enqueued_at).where(Image.id.in_(ids)))
        return {image_id: sent_at for image_id, sent_at in rows}


@pytest.mark.timeout(180)
def test_a_lost_urgent_message_is_counted_and_re_sent_by_the_sweeper_past_a_routine_backlog(
        wiring: tuple[Settings, sessionmaker[Session], Celery],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    settings, sessions, app = wiring
    routine = _sent(wiring, "night", 12, Priority.ROUTINE, timedelta(hours=1))
    urgent = _sent(wiring, "urgent", 4, Priority.URGENT, timedelta(minutes=5))
    assert _worker_killed_holding_the_next_message(settings) == urgent
    assert _lists(settings) == (0, 3, 1)  # the urgent message in kombu's unacked hash

    env = {"database_url": settings.database_url, "broker_url": str(settings.broker_url)}
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path, **env)
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert (health["queue_depth"], health["messages_lost"], health["messages_owed"],
            health["lost_after_s"], health["urgent_lost_after_s"]) == (3, 4, 0, 600, 120)
    result = run_cli(["status"], monkeypatch, tmp_path, **env)
    assert ("warning: 4 image(s) queued for over 600 s (120 s if urgent) while no message "
            "waits in the broker at their priority or a more urgent one: their messages were "
            "probably lost") in result.stderr

    before = _waiting_since(sessions, routine)
    caplog.set_level(logging.INFO, logger="worker.sweeper")
    loop = SweepLoop(app, settings)  # a replacement worker's sweeper
    loop.run_once()
    assert loop.follow_up is not None
    loop.follow_up.join(timeout=30)

    assert ("sweeper: re-queued 4 image(s) in 1 message(s): 16 queued too long, 0 claimed by "
            "a worker that stopped (broker still holds 3 message(s) at their priority or a "
            "more urgent one; 12 queued image(s) whose message was sent left alone)"
            ) in caplog.text
    assert _lists(settings) == (1, 3, 1)  # one urgent message, served before the backlog
    with app.connection_for_read() as conn, conn.channel() as channel:
        message = channel.basic_get(QUEUE_NAME, no_ack=True)
        assert message is not None and sorted(message.decode()[0][0]) == urgent
    assert _waiting_since(sessions, routine) == before  # the routine backlog left alone


@pytest.mark.timeout(180)
def test_recover_by_default_re_sends_the_lost_urgent_message_and_names_what_it_left(
        wiring: tuple[Settings, sessionmaker[Session], Celery],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, _, app = wiring
    overdue = _sent(wiring, "last night", 4, Priority.ROUTINE, timedelta(hours=1))
    _sent(wiring, "tonight", 8, Priority.ROUTINE, timedelta(minutes=15))  # waiting
    _sent(wiring, "just now", 4, Priority.ROUTINE, timedelta(minutes=1))  # young
    urgent = _sent(wiring, "urgent", 2, Priority.URGENT, timedelta(minutes=5))
    assert _worker_killed_holding_the_next_message(settings) == urgent
    env = {"database_url": settings.database_url, "broker_url": str(settings.broker_url)}

    result = run_cli(["recover", "--dry-run"], monkeypatch, tmp_path, **env)
    assert "dry run: would re-queue 6 queued and 0 stale-claimed image(s)" in result.output
    result = run_cli(["recover"], monkeypatch, tmp_path, **env)

    assert result.exit_code == ExitCode.OK, result.output
    # Sent over 1800 s ago: re-sent whatever the broker holds, as before.
    assert ("re-queued 6 image(s) in 2 message(s): 14 queued too long, 0 claimed by a worker "
            "that stopped (broker still holds 4 message(s) at their priority or a more urgent "
            "one; 8 queued image(s) whose message was sent left alone)") in result.output
    assert ("12 queued image(s) were left alone: waiting under 600 s (120 s if urgent), or "
            "under 1800 s behind messages still in the broker at their priority or a more "
            "urgent one; `mammo recover --older-than 0` re-sends them") in result.output
    assert _lists(settings) == (1, 4 + 1, 1)
    with app.connection_for_read() as conn, conn.channel() as channel:
        first = channel.basic_get(QUEUE_NAME, no_ack=True)
        second = channel.basic_get(QUEUE_NAME, no_ack=True)
    assert first is not None and sorted(first.decode()[0][0]) == urgent
    assert second is not None and sorted(second.decode()[0][0]) == overdue
