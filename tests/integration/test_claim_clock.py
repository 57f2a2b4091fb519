"""Claims' leases are stamped and judged on the database's clock, not each host's.

Workers, sweepers and `mammo recover` run on several hosts: a host whose clock ran ahead
by more than a lease took over images a live worker still held, and one running behind
kept a dead worker's claims (and stamped its own renewals as already expired). Here a
process's clock is set 10 minutes off (every ``utcnow`` the claim code reads) against a
real PostgreSQL server, whose clock is the one all of them share.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from shared import queries, recovery
from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.schema import Image, ModelVersion, Prediction
from shared.queue import create_celery_app, queue_depth
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by, server_now
from tests.helpers.db import queued_batch, schema_sessions

SKEW = timedelta(minutes=10)


@pytest.fixture
def settings(postgres_url: str, redis_url: str) -> Settings:
    return Settings(database_url=postgres_url, broker_url=redis_url,  # type: ignore[call-arg]
                    _env_file=None)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    app = create_celery_app(settings)
    yield app
    app.close()


def _host_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """This process's clock, as every module that judges claims reads it, is ``offset``
    away from the database server's."""
    # lifecycle no longer reads this host's clock at all: it stays in the list, so that
    # it is skewed with the rest if it starts to again.
    host_clock_off_by(monkeypatch, offset, (lifecycle, recovery, queries, clock, registration))


def _claims(sessions: sessionmaker[Session],
            ids: list[int]) -> dict[int, tuple[str, str | None, int, datetime | None]]:
    """Each image's (state, claim token, attempts, claimed_at)."""
    with sessions() as session:
        return {row.id: (row.state, row.claim_token, row.attempts, as_utc(row.claimed_at))
                for row in session.execute(
                    select(Image.id, Image.state, Image.claim_token, Image.attempts,
                           Image.claimed_at).where(Image.id.in_(ids)))}


def _claimed_seconds_ago(sessions: sessionmaker[Session], ids: list[int], seconds: int) -> None:
    """As if the holder last renewed ``seconds`` ago, by the database server's clock."""
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(claimed_at=func.now() - timedelta(seconds=seconds)))
        session.commit()


def test_database_now_is_the_servers_time_whatever_this_hosts_clock_says(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    _host_clock_off_by(monkeypatch, SKEW)
    with sessions() as session:
        now = clock.database_now(session)
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs(now - server_now(sessions)) < timedelta(seconds=30)


def test_a_host_running_ahead_leaves_a_live_claim_to_its_worker(
        settings: Settings, sessions: sessionmaker[Session], app: Celery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lease_s = settings.claim_lease_s
    assert timedelta(seconds=lease_s) < SKEW  # ahead by more than a whole lease
    _, ids = queued_batch(sessions, "night", 4)
    held, fresh = ids[:2], ids[2:]
    with sessions() as session:  # a live worker on a host with the server's time
        assert len(lifecycle.claim(session, held, token="live-worker", lease_s=lease_s)) == 2

    _host_clock_off_by(monkeypatch, SKEW)
    with sessions() as session:  # another worker's message for the same images
        assert lifecycle.claim(session, held, token="ahead-worker", lease_s=lease_s) == []
    report = recovery.sweep(sessions, app, settings, queued_older_than_s=600, force=True)
    assert (report.expired_claims, report.requeued) == ([], [])
    assert queue_depth(app) == 0
    with sessions() as session:
        assert recovery.held_claims(session, settings, held).count == 2
        health = queries.system_health(session, lease_s=lease_s)
    assert (health["stale_claims"], health["unrenewed_claims"]) == (0, 0)
    assert {image_id: row[:3] for image_id, row in _claims(sessions, held).items()} == {
        image_id: ("processing", "live-worker", 1) for image_id in held}

    # Its own claims are stamped on the server's clock too: not 10 minutes into the
    # future, where a dead worker's claim would outlive its lease by as much.
    with sessions() as session:
        assert len(lifecycle.claim(session, fresh, token="ahead-worker", lease_s=lease_s)) == 2
    server_time = server_now(sessions)
    for _state, _token, _attempts, claimed_at in _claims(sessions, fresh).values():
        assert claimed_at is not None
        assert abs(claimed_at - server_time) < timedelta(seconds=30)


def test_a_host_running_behind_takes_over_expired_claims_and_renews_on_the_servers_clock(
        settings: Settings, sessions: sessionmaker[Session], app: Celery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lease_s = settings.claim_lease_s
    swept_batch, swept = queued_batch(sessions, "swept", 2)
    _, taken = queued_batch(sessions, "taken", 2)
    with sessions() as session:  # a worker that died: its lease ended 30 s ago
        lifecycle.claim(session, swept + taken, token="dead-worker", lease_s=lease_s)
    _claimed_seconds_ago(sessions, swept + taken, lease_s + 30)

    _host_clock_off_by(monkeypatch, -SKEW)
    report = recovery.sweep(sessions, app, settings, queued_older_than_s=600,
                            batch_id=swept_batch, force=True)
    assert (report.expired_claims, report.requeued) == (swept, swept)
    assert queue_depth(app) == 1
    with sessions() as session:
        assert len(lifecycle.claim(session, taken, token="behind-worker",
                                   lease_s=lease_s)) == 2
        assert lifecycle.renew(session, "behind-worker") == 2
    rows = _claims(sessions, taken)
    assert {row[:3] for row in rows.values()} == {("processing", "behind-worker", 2)}
    server_time = server_now(sessions)
    assert all(row[3] is not None and abs(row[3] - server_time) < timedelta(seconds=30)
               for row in rows.values())

    # Its renewal keeps the claims live for a judge with the server's time.
    _host_clock_off_by(monkeypatch, timedelta(0))
    with sessions() as session:
        assert lifecycle.claim(session, taken, token="other-worker", lease_s=lease_s) == []
        assert recovery.held_claims(session, settings, taken).count == 2


def _scored_here(sessions: sessionmaker[Session], batch_id: int, n: int) -> None:
    """``n`` images of the batch scored in the last minute by a worker on this host: their
    predictions and finishes carry the server's clock, as the worker stamps them."""
    with sessions() as session:
        session.add(ModelVersion(id=1, name="m", version="1", sha256="0" * 64,
                                 preprocessing_version="1", classes=["a"],
                                 input_size=[64, 64], path="/m"))
        for i in range(n):
            image = Image(identity=f"sha256:done-{i}", batch_id=batch_id, attempts=1,
                          source=f"/in/done/{i}.png", format="png", state="done",
                          finished_at=func.now() - timedelta(seconds=50 - 5 * i))
            session.add(image)
            session.flush()
            session.add(Prediction(
                image_id=image.id, model_version_id=1, preprocessing_version="1",
                label="normal", p_normal=0.9, p_benign=0.05, p_malignant=0.05, suspicion=1,
                decode_ms=100.0, preprocess_ms=100.0, infer_ms=100.0,
                forward_pass_id=f"fp-{i}", forward_pass_size=1,
                created_at=func.now() - timedelta(seconds=50 - 5 * i)))
        session.commit()


def test_status_on_a_host_running_ahead_keeps_the_eta_of_a_batch_being_worked_on(
        settings: Settings, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `mammo status` and the worker on one host, 10 minutes ahead of the server: the
    # worker's claims (renewed a moment ago, on the server's clock) must read as live, or
    # the batch shows no ETA while it is being scored.
    lease_s = settings.claim_lease_s
    _host_clock_off_by(monkeypatch, SKEW)
    batch_id, ids = queued_batch(sessions, "night", 4)
    _scored_here(sessions, batch_id, 4)
    with sessions() as session:
        assert len(lifecycle.claim(session, ids[:2], token="worker", lease_s=lease_s)) == 2
        session.commit()
        status = queries.batch_status(session, batch_id, lease_s=lease_s)
    assert status is not None and status.images_per_minute
    assert status.eta_seconds is not None and status.eta_seconds > 0
