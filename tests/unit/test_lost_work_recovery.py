"""Work a killed worker leaves behind comes back once, promptly, and says so.

A worker killed mid-way through a redelivered chunk's image-by-image pass leaves its
waiting images under a lease the sweeper re-sends; a re-sent expired claim is queued
again, so the next sweep does not send it again; `mammo recover` names the queued images
its wait leaves alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.schema import Image
from shared.enums import Priority
from shared.queue import QUEUE_NAME, queue_depth
from shared.recovery import find_stuck, sweep
from shared.synthetic import make_exam_set
from shared.timeutil import utcnow
from tests.helpers.cli import invoke_cli
from tests.helpers.db import queued_batch, schema_sessions
from worker import pipeline
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _expire_claims(sessions: sessionmaker[Session], ids: list[int]) -> None:
    """As if their holder stopped renewing them an hour ago."""
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(claimed_at=utcnow() - timedelta(hours=1)))
        session.commit()


def _rows(sessions: sessionmaker[Session],
          ids: list[int]) -> dict[int, tuple[str, int, str | None]]:
    """Each image's (state, attempts, claim token)."""
    with sessions() as session:
        return {row.id: (row.state, row.attempts, row.claim_token) for row in session.execute(
            select(Image.id, Image.state, Image.attempts, Image.claim_token)
            .where(Image.id.in_(ids)))}


# -- a worker killed during a redelivered chunk's image-by-image pass -------------------


def _exam(sessions: sessionmaker[Session], tmp_path: Path, *, seed: int) -> list[int]:
    """The ids of one registered exam of 4 real image files."""
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=seed)
    return register_files(sessions, batch, files).new_ids


class _WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


def test_a_worker_killed_mid_pass_leaves_its_waiting_images_to_the_sweeper(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _exam(sessions, tmp_path, seed=9)
    with sessions() as session:  # a first delivery whose worker died after claiming
        lifecycle.claim(session, ids, token="task-1", lease_s=settings.claim_lease_s)
    run_group = pipeline._run_group

    def killed_on_the_second(group: list[lifecycle.ClaimedImage], *args: object) -> object:
        if group[0].id == ids[1]:
            raise _WorkerKilled
        return run_group(group, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_run_group", killed_on_the_second)
    with pytest.raises(_WorkerKilled):
        process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))

    rows = _rows(sessions, ids)
    assert rows[ids[0]] == ("done", 2, "task-1")  # charged once per run, as ever
    assert rows[ids[1]] == ("processing", 2, "task-1")  # the one at work: charged
    # Those still waiting: claimed, not queued with their message lost with the worker,
    # and not charged for a run they never had.
    assert all(rows[i] == ("processing", 1, "task-1") for i in ids[2:])
    _expire_claims(sessions, ids)
    with sessions() as session:
        stuck = find_stuck(session, settings, queued_older_than_s=settings.requeue_after_s)
    assert stuck.expired_claims == ids[1:] and stuck.stale_queued == []


def test_a_redelivered_chunk_still_charges_one_attempt_per_image_run(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    ids = _exam(sessions, tmp_path, seed=10)
    with sessions() as session:
        lifecycle.claim(session, ids, token="task-1", lease_s=settings.claim_lease_s)
    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))
    assert (result.done, result.forward_passes) == (4, 4)
    assert {attempts for _, attempts, _ in _rows(sessions, ids).values()} == {2}


# -- the sweeper re-sends an expired claim once -----------------------------------------


def test_an_expired_claim_is_re_sent_once_and_queued_again(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session]) -> None:
    settings, app = broker
    _, ids = queued_batch(sessions, "night", 3)
    with sessions() as session:  # a whole worker killed mid-chunk, its poison charged
        lifecycle.claim(session, ids, token="dead-worker", lease_s=settings.claim_lease_s)
    _expire_claims(sessions, ids)

    first = sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s)
    again = sweep(sessions, app, settings, queued_older_than_s=settings.requeue_after_s)

    assert (first.requeued, first.expired_claims, first.messages) == (ids, ids, 1)
    assert (again.requeued, again.messages) == ([], 0)
    assert queue_depth(app) == 1  # one message for the lost chunk, not one per sweep
    assert all(row == ("queued", 1, None) for row in _rows(sessions, ids).values())
    with sessions() as session:
        # The dead claim's holder, if it was only held up, writes nothing for them now.
        assert lifecycle.mark_done(session, ids, token="dead-worker") == []
        # The new message's worker claims them, and charges them: a poison that kills
        # whole workers still reaches its quarantine.
        taken = lifecycle.claim(session, ids, token="new-worker", lease_s=settings.claim_lease_s)
    assert [c.attempts for c in taken] == [2, 2, 2]


def test_a_claim_taken_or_renewed_since_it_was_found_is_not_released(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    _, ids = queued_batch(sessions, "night", 2)
    with sessions() as session:
        lifecycle.claim(session, ids, token="dead-worker", lease_s=settings.claim_lease_s)
    _expire_claims(sessions, ids)
    cutoff = utcnow() - timedelta(seconds=settings.claim_lease_s)
    with sessions() as session:  # between the sweep's look and its release, a worker...
        lifecycle.claim(session, ids[:1], token="live-worker", lease_s=settings.claim_lease_s)
        released = lifecycle.release_expired(session, ids, claimed_before=cutoff)
    assert released == ids[1:]
    assert _rows(sessions, ids)[ids[0]] == ("processing", 2, "live-worker")


# -- mammo recover names what its wait leaves alone -------------------------------------


def test_recover_names_the_younger_queued_images_it_left_alone(
        broker: tuple[Settings, Celery], sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Messages lost with no Redis restart (FLUSHDB, an eviction): the images queued a few
    minutes ago are within the wait, and the summary alone said '0 queued too long'."""
    settings, app = broker
    _, old = queued_batch(sessions, "old", 2)
    _, young = queued_batch(sessions, "young", 3)
    with sessions() as session:
        lifecycle.mark_enqueued(session, old, utcnow() - timedelta(hours=1))
        lifecycle.mark_enqueued(session, young, utcnow() - timedelta(minutes=4))
        session.commit()

    code, out = invoke_cli(["recover", "--older-than", "600"], monkeypatch, tmp_path,
                           database_url=settings.database_url,
                           broker_url=str(settings.broker_url))

    assert code == ExitCode.OK, out
    assert "re-queued 2 image(s) in 1 message(s): 2 queued too long" in out
    assert ("3 queued image(s) younger than 600 s were left alone; "
            "`mammo recover --older-than 0` re-sends them") in out
    with app.connection_for_read() as conn, conn.channel() as channel:
        message = channel.basic_get(QUEUE_NAME, no_ack=True)
        assert message is not None and sorted(message.decode()[0][0]) == old
