"""An image owed a message is sent by the sweeper whatever the broker holds, and is not
taken for lost while the process that queued it is about to send it.

A claim handed back (an expired lease the sweeper released, a timed-out chunk's images, a
chunk that gave up its retries) whose message could not be sent (a broker blip) looked
sent: it waited for an empty broker queue, an urgent image behind a whole night's routine
work. An image reopened by `mammo rescore` counted from its registration: a sweep between
the reopen's commit and its send took it for lost and sent it a second message, with a
warning. Real Redis: the broker queue really holds a night's messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import shared.recovery
import worker.tasks
from shared.config import Settings
from shared.db import lifecycle
from shared.db.schema import Image
from shared.enums import ImageState, Priority
from shared.errors import BrokerUnavailableError, DatabaseUnavailableError
from shared.queue import (
    QUEUE_NAME,
    TASK_PROCESS_CHUNK,
    create_celery_app,
    enqueue_chunks,
    queue_depth,
)
from shared.recovery import requeue, sweep
from shared.timeutil import utcnow
from tests.helpers.db import queued_batch, schema_sessions
from worker.pipeline import ChunkResult
from worker.runtime import WorkerRuntime

NIGHT = 5  # routine messages waiting in the broker: a busy night, not a lost message


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _registered_an_hour_ago(sessions: sessionmaker[Session], ids: list[int]) -> None:
    """Registered and sent an hour ago: older than any sweep's wait."""
    then = utcnow() - timedelta(hours=1)
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(created_at=then, enqueued_at=then))
        session.commit()


def _busy_night(sessions: sessionmaker[Session], app: Celery) -> list[int]:
    """Routine images sent a moment ago, their messages still in the broker."""
    _, ids = queued_batch(sessions, "night", NIGHT)
    enqueue_chunks(app, ids, chunk_size=1, priority=Priority.ROUTINE)
    with sessions() as session:
        lifecycle.mark_enqueued(session, ids)
        session.commit()
    assert queue_depth(app) == NIGHT
    return ids


def _send_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker blips during the next re-send, and is back for the one after."""
    real = shared.recovery.enqueue_by_priority
    failed: list[bool] = []

    def blip(app: Celery, groups: Mapping[Priority, Sequence[int]], *, chunk_size: int) -> int:
        if not failed:
            failed.append(True)
            raise BrokerUnavailableError("Cannot reach the message broker: connection reset")
        return real(app, groups, chunk_size=chunk_size)

    monkeypatch.setattr(shared.recovery, "enqueue_by_priority", blip)


def _drain(app: Celery) -> list[list[int]]:
    """Every chunk in the broker, in the order a worker would receive them."""
    chunks = []
    with app.connection_for_read() as conn, conn.channel() as channel:
        while (message := channel.basic_get(QUEUE_NAME, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()
            chunks.append(list(args[0]))
    return chunks


def _sent_at(sessions: sessionmaker[Session], ids: list[int]) -> list[object]:
    with sessions() as session:
        return list(session.scalars(select(Image.enqueued_at).where(Image.id.in_(ids))
                                    .order_by(Image.id)))


def _swept(sessions: sessionmaker[Session], app: Celery,
           settings: Settings) -> shared.recovery.SweepReport:
    return sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s)


def test_an_expired_claim_whose_re_send_failed_is_sent_by_the_next_sweep_on_a_busy_night(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = broker
    _, stat = queued_batch(sessions, "stat", 1, Priority.URGENT)
    _registered_an_hour_ago(sessions, stat)
    with sessions() as session:  # its worker died an hour ago
        lifecycle.claim(session, stat, token="dead-worker", lease_s=settings.claim_lease_s)
        session.execute(update(Image).where(Image.id.in_(stat))
                        .values(claimed_at=utcnow() - timedelta(hours=1)))
        session.commit()
    night = _busy_night(sessions, app)
    _send_fails_once(monkeypatch)

    with pytest.raises(BrokerUnavailableError):
        _swept(sessions, app, settings)
    assert _sent_at(sessions, stat) == [None]  # owed a message: none of its is in the broker

    second = _swept(sessions, app, settings)  # the broker holds the night's messages
    third = _swept(sessions, app, settings)

    assert (second.requeued, second.messages) == (stat, 1)
    assert (second.owed, second.note) == (stat, "")
    assert "1 queued too long (1 with no message sent)" in second.summary()
    assert (third.requeued, third.stale_queued) == ([], [])  # sent once, stamped
    chunks = _drain(app)
    assert chunks[0] == stat  # urgent: ahead of the night
    assert sorted(i for chunk in chunks[1:] for i in chunk) == night


def test_images_a_timed_out_chunk_hands_back_are_sent_by_the_next_sweep_if_their_send_failed(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = broker
    _, ids = queued_batch(sessions, "slow", 2, Priority.URGENT)
    _registered_an_hour_ago(sessions, ids)
    with sessions() as session:
        lifecycle.claim(session, ids, token="chunk-1", lease_s=settings.claim_lease_s)
    night = _busy_night(sessions, app)
    _send_fails_once(monkeypatch)

    with pytest.raises(BrokerUnavailableError):  # the chunk hit its soft time limit
        worker.tasks._requeue_one_by_one(app, WorkerRuntime(settings), ids, "chunk-1")
    report = _swept(sessions, app, settings)

    assert report.requeued == ids
    assert report.owed == ids
    chunks = _drain(app)
    assert chunks[0] == ids and sorted(i for chunk in chunks[1:] for i in chunk) == night


def test_a_chunk_that_gives_up_its_retries_leaves_its_images_to_the_next_sweep(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last try's save was refused: its images were handed back (attempts refunded)
    and no retry follows, so no message of theirs is anywhere."""
    settings, app = broker
    _, ids = queued_batch(sessions, "refused", 2, Priority.URGENT)
    _registered_an_hour_ago(sessions, ids)

    def refused(image_ids: list[int], *, token: str, runtime: WorkerRuntime) -> None:
        with runtime.sessions() as session:
            lifecycle.claim(session, image_ids, token=token, lease_s=settings.claim_lease_s)
            lifecycle.release(session, image_ids, token, refund=True)
        raise DatabaseUnavailableError("database unavailable while saving: disk full")

    monkeypatch.setattr(worker.tasks, "process_chunk", refused)
    monkeypatch.setattr(worker.tasks, "TRANSIENT_RETRIES", 0)  # the last try
    embedded = create_celery_app(settings.embedded())
    worker.tasks.register_tasks(embedded, WorkerRuntime(settings))
    outcome = embedded.tasks[TASK_PROCESS_CHUNK].apply(args=[ids])
    assert outcome.failed() and isinstance(outcome.result, DatabaseUnavailableError)
    _busy_night(sessions, app)

    report = _swept(sessions, app, settings)

    assert report.requeued == ids
    assert report.owed == ids
    with sessions() as session:
        assert set(session.scalars(select(Image.attempts).where(Image.id.in_(ids)))) == {0}


def test_a_chunks_retry_stamps_the_images_it_handed_back_as_sent(
        settings: Settings, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Left owed, a watcher's scan (and, after its wait, a sweep) sent them a second
    message while the retry's was on its way."""
    _, ids = queued_batch(sessions, "retried", 2)
    _registered_an_hour_ago(sessions, ids)
    sent_at_retry: list[list[object]] = []

    def refused_once(image_ids: list[int], *, token: str, runtime: WorkerRuntime) -> ChunkResult:
        if not sent_at_retry:
            sent_at_retry.append([])
            with runtime.sessions() as session:
                lifecycle.claim(session, image_ids, token=token, lease_s=settings.claim_lease_s)
                lifecycle.release(session, image_ids, token, refund=True)
            raise DatabaseUnavailableError("database unavailable while saving: disk full")
        sent_at_retry.append(_sent_at(sessions, image_ids))
        return ChunkResult(claimed=len(image_ids))

    monkeypatch.setattr(worker.tasks, "process_chunk", refused_once)
    embedded = create_celery_app(settings.embedded())
    worker.tasks.register_tasks(embedded, WorkerRuntime(settings))
    assert embedded.tasks[TASK_PROCESS_CHUNK].apply(args=[ids]).successful()

    [_, stamps] = sent_at_retry
    assert None not in stamps
    with sessions() as session:
        assert lifecycle.never_sent(session, ids) == []


def test_a_chunks_retry_on_its_way_is_not_raced_by_a_sweep(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session]) -> None:
    """Handed back for a retry (the save was refused): the retry's message comes within a
    minute, so the sweeper's usual wait counts from the hand-back."""
    settings, app = broker
    _, ids = queued_batch(sessions, "retried", 2)
    _registered_an_hour_ago(sessions, ids)
    with sessions() as session:
        lifecycle.claim(session, ids, token="chunk-1", lease_s=settings.claim_lease_s)
        lifecycle.release(session, ids, "chunk-1", refund=True)

    report = _swept(sessions, app, settings)  # the broker queue is empty

    assert (report.requeued, report.stale_queued) == ([], [])
    assert queue_depth(app) == 0


@pytest.fixture
def backend_broker(each_backend_sessions: sessionmaker[Session], settings: Settings,
                   redis_url: str) -> Iterator[tuple[Settings, Celery]]:
    url = each_backend_sessions.kw["bind"].url.render_as_string(hide_password=False)
    wired = settings.model_copy(update={"broker_url": redis_url, "database_url": url})
    app = create_celery_app(wired)
    yield wired, app
    app.close()


def _scored_yesterday(sessions: sessionmaker[Session], n: int) -> list[int]:
    _, ids = queued_batch(sessions, "yesterday", n)
    then = utcnow() - timedelta(days=1)
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids)).values(
            state=ImageState.DONE.value, attempts=1, created_at=then, enqueued_at=then,
            finished_at=then))
        session.commit()
    return ids


def test_a_sweep_between_a_rescores_reopen_and_its_send_leaves_the_images_alone(
        backend_broker: tuple[Settings, Celery],
        each_backend_sessions: sessionmaker[Session]) -> None:
    settings, app = backend_broker
    sessions = each_backend_sessions
    ids = _scored_yesterday(sessions, 2)
    with sessions() as session:
        assert lifecycle.reopen(session, ids) == ids
        session.commit()

    gap = _swept(sessions, app, settings)  # the broker queue is empty: nothing hides them
    with sessions() as session:  # `mammo recover` names them as left alone, not lost
        young = lifecycle.queued_since(
            session, utcnow() - timedelta(seconds=settings.requeue_after_s))
    sent = requeue(sessions, app, settings, ids)  # the rescore's own send

    assert (gap.requeued, gap.stale_queued, gap.messages) == ([], [], 0)
    assert young == 2
    assert sent == 1 and _drain(app) == [ids]


def test_an_owed_image_waits_from_its_latest_queuing_whichever_column_holds_it(
        each_backend_sessions: sessionmaker[Session]) -> None:
    """A failed image retried by a resubmission is registered anew (its created_at reset)
    and keeps the requeued_at of a hand-back before its failure; a reopened one keeps its
    created_at. Either way a sweep counts from the later, where its sender is about to
    send it."""
    sessions = each_backend_sessions
    _, (retried, reopened, lost) = queued_batch(sessions, "mixed", 3)
    now, hour = utcnow(), timedelta(hours=1)
    with sessions() as session:
        for image_id, created, requeued in ((retried, now, now - hour),
                                            (reopened, now - 24 * hour, now),
                                            (lost, now - 24 * hour, now - hour)):
            session.execute(update(Image).where(Image.id == image_id).values(
                created_at=created, requeued_at=requeued, enqueued_at=None))
        session.commit()
        cutoff = now - timedelta(minutes=10)
        stale = lifecycle.stale_images(session, queued_before=cutoff, claimed_before=cutoff)
        young = lifecycle.queued_since(session, cutoff)

    assert (stale, young) == ([lost], 2)


def test_a_rescore_whose_send_failed_leaves_its_images_to_the_next_sweep(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = broker
    ids = _scored_yesterday(sessions, 2)
    with sessions() as session:
        lifecycle.reopen(session, ids)
        session.commit()
    _busy_night(sessions, app)
    _send_fails_once(monkeypatch)
    with pytest.raises(BrokerUnavailableError):
        requeue(sessions, app, settings, ids)

    report = _swept(sessions, app, settings)

    assert report.requeued == ids
    assert report.owed == ids
