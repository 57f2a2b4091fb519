"""How long the sweeper waits before it presumes a queued image's message lost: the
ordinary MAMMO_REQUEUE_AFTER_S, cut short when the Redis broker started since."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.queue import QUEUE_NAME, broker_uptime_s, create_celery_app, live_workers
from shared.recovery import HeldClaims, lost_message_age_s
from shared.timeutil import utcnow
from tests.helpers.cli import invoke_cli, run_cli
from tests.helpers.db import queued_batch


def test_the_wait_is_the_time_since_the_broker_started_when_that_is_shorter() -> None:
    assert lost_message_age_s(600, None) == 600  # a transport that cannot tell
    assert lost_message_age_s(600, 42.9) == 42  # Redis restarted 42.9 s ago
    assert lost_message_age_s(600, 0.4) == 0
    assert lost_message_age_s(600, 86_400.0) == 600  # up for a day: the ordinary wait


def test_the_uptime_is_read_from_a_real_redis_and_unknown_elsewhere(
        redis_url: str, settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(update={"broker_url": redis_url}))
    expected = redis.Redis.from_url(redis_url).info("server")["uptime_in_seconds"]
    uptime = broker_uptime_s(app)
    assert uptime is not None and expected <= uptime <= expected + 5
    assert broker_uptime_s(create_celery_app(settings)) is None  # the embedded queue


def test_an_unreachable_broker_has_no_uptime(settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0"}))
    app.conf.broker_connection_max_retries = 0
    assert broker_uptime_s(app) is None


def test_recover_names_the_claims_it_leaves_to_their_holder_until_their_lease_ends(
        redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    _, ids = queued_batch(sessions, "night", 4)
    with sessions() as session:  # a worker's chunk in hand (alive, or killed a moment ago)
        lifecycle.claim(session, ids[:2], token="a-worker", lease_s=settings.claim_lease_s)
    engine.dispose()
    code, out = invoke_cli(["recover"], monkeypatch, tmp_path,
                           database_url=settings.database_url, broker_url=redis_url)
    assert code == ExitCode.OK, out
    assert "0 claimed by a worker that stopped" in out
    assert ("2 image(s) claimed by another process (a run or worker still busy with them, or "
            "one stopped mid-chunk) until their lease ends at ") in out
    assert "re-sends them after that" in out


@pytest.mark.timeout(90)
def test_status_names_the_workers_that_answer_and_flags_messages_lost_from_an_empty_queue(
        redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """After a Redis restart without its data: images queued, the queue empty. Workers
    just started (nothing scored yet) are listed too."""
    settings = settings.model_copy(update={"broker_url": redis_url})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    _, ids = queued_batch(sessions, "night", 4)
    with sessions() as session:
        lifecycle.mark_enqueued(session, ids[:3], utcnow() - timedelta(hours=1))
        lifecycle.mark_enqueued(session, ids[3:])  # sent a moment ago: not presumed lost
        session.commit()
    engine.dispose()
    app = create_celery_app(settings)
    worker = app.WorkController(pool="solo", concurrency=1, hostname="fresh@test",
                                queues=[QUEUE_NAME], without_heartbeat=True,
                                without_mingle=True, without_gossip=True, loglevel="WARNING")
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "fresh@test" not in (live_workers(app) or []) and time.monotonic() < deadline:
            time.sleep(0.5)
        result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                         database_url=settings.database_url, broker_url=redis_url)
        assert result.exit_code == ExitCode.OK, result.output
        health = json.loads(result.stdout)[0]
        assert health["workers_live"] == "fresh@test"
        assert health["workers_scored_10min"] == "none"
        assert (health["queue_depth"], health["messages_lost"], health["lost_after_s"]) == (
            0, 3, settings.requeue_after_s)
        result = run_cli(["status"], monkeypatch, tmp_path,
                         database_url=settings.database_url, broker_url=redis_url)
        assert ("warning: 3 image(s) queued for over 600 s (120 s if urgent) while no message "
                "waits in the broker at their priority or a more urgent one: their messages "
                "were probably lost") in result.stderr
        assert "run `mammo recover`" in result.stderr
    finally:
        worker.stop(in_sighandler=False)
        thread.join(timeout=30)


def test_status_without_a_broker_asks_no_worker(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=settings.database_url)
    health = json.loads(result.stdout)[0]
    assert (health["broker"], health["workers_live"], health["messages_lost"]) == (
        "embedded (no broker)", None, None)


def test_a_lease_end_is_told_in_utc_whatever_the_host_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # It was told in the host's local zone, unlabelled, where every other time is UTC.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        held = HeldClaims(2, datetime(2026, 12, 6, 23, 30, 5, tzinfo=UTC))
        assert held.describe().endswith("until their lease ends at 2026-12-06 23:30:05 UTC")
    finally:
        monkeypatch.undo()
        time.tzset()
