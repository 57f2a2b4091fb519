"""Claims and upserts: the database decides who owns an image, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image, ModelVersion, Prediction
from shared.db.upsert import insert_missing, upsert, upsert_returning_id
from shared.enums import ErrorCode
from shared.timeutil import utcnow


def _sessions(url: str) -> sessionmaker[Session]:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    return make_session_factory(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    factory = _sessions(url)
    yield factory
    factory.kw["bind"].dispose()


def _images(sessions: sessionmaker[Session], n: int) -> list[int]:
    with sessions() as s:
        batch = Batch(name="t")
        s.add(batch)
        s.flush()
        rows = [{"identity": f"sha256:{i}", "batch_id": batch.id, "source": f"/x/{i}.png",
                 "format": "png", "state": "queued", "attempts": 0} for i in range(n)]
        ids = insert_missing(s, Image, rows, conflict=("identity",), returning=Image.id)
        s.commit()
        return sorted(ids)


def test_claim_is_exclusive_and_counts_attempts(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 3)
    with sessions() as s:
        first = lifecycle.claim(s, ids, token="task-a", lease_s=600)
        second = lifecycle.claim(s, ids, token="task-b", lease_s=600)
    assert [c.id for c in first] == ids
    assert all(c.attempts == 1 for c in first)
    assert second == []  # another task holds them and its lease is fresh


def test_same_task_redelivered_reclaims_and_counts_again(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 2)
    with sessions() as s:
        lifecycle.claim(s, ids, token="task-a", lease_s=600)
        again = lifecycle.claim(s, ids, token="task-a", lease_s=600)
    assert [c.attempts for c in again] == [2, 2]


def test_expired_lease_can_be_taken_over(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 1)
    with sessions() as s:
        lifecycle.claim(s, ids, token="dead-worker", lease_s=600)
        s.execute(update(Image).values(claimed_at=utcnow() - timedelta(hours=1)))
        s.commit()
        taken = lifecycle.claim(s, ids, token="task-b", lease_s=600)
    assert [c.id for c in taken] == ids


def test_done_images_are_never_claimed_again(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 2)
    with sessions() as s:
        lifecycle.claim(s, ids, token="t", lease_s=600)
        lifecycle.mark_done(s, ids[:1])
        lifecycle.mark_failed(s, ids[1], ErrorCode.TRUNCATED, "cut short")
        s.commit()
        assert lifecycle.claim(s, ids, token="t", lease_s=600) == []
        states = dict(s.execute(select(Image.id, Image.state)).all())
    assert states == {ids[0]: "done", ids[1]: "failed"}


def test_release_returns_images_to_the_queue(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 2)
    with sessions() as s:
        lifecycle.claim(s, ids, token="t", lease_s=600)
        released = lifecycle.release(s, ids, "t", refund=True)
        image = s.get(Image, ids[0])
    assert released == ids
    assert image is not None and image.state == "queued" and image.attempts == 0


def test_batch_finishes_only_when_no_image_is_active(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 2)
    with sessions() as s:
        batch_id = s.get(Image, ids[0]).batch_id  # type: ignore[union-attr]
        lifecycle.mark_done(s, ids[:1])
        lifecycle.finish_batches(s, [batch_id])
        s.commit()
        assert s.get(Batch, batch_id).finished_at is None  # type: ignore[union-attr]
        lifecycle.mark_done(s, ids[1:])
        lifecycle.finish_batches(s, [batch_id])
        s.commit()
        s.expire_all()
        assert s.get(Batch, batch_id).finished_at is not None  # type: ignore[union-attr]


def test_two_workers_finishing_a_batch_at_once_stamp_it_exactly_once(postgres_url: str) -> None:
    """The worker's protocol: mark its images and commit, then stamp in a new transaction.

    Worker A commits first and stamps while B's last image is still active in B's open
    transaction; B stamps after its commit and is the one that finds the batch finished.
    (Stamping inside the marking transaction lost the batch: each saw the other's image
    still active.) PostgreSQL only: SQLite lets one writer at a time, so it cannot race.
    """
    sessions = _sessions(postgres_url)
    ids = _images(sessions, 2)
    with sessions() as a, sessions() as b:
        batch_id = a.get(Image, ids[0]).batch_id  # type: ignore[union-attr]
        lifecycle.mark_done(a, ids[:1])
        a.commit()
        lifecycle.mark_done(b, ids[1:])
        with sessions() as stamp_a:
            assert lifecycle.finish_batches(stamp_a, [batch_id]) == []
            stamp_a.commit()
        b.commit()
        with sessions() as stamp_b:
            assert lifecycle.finish_batches(stamp_b, [batch_id]) == [batch_id]
            stamp_b.commit()
    with sessions() as s:
        assert lifecycle.finish_batches(s, [batch_id]) == []  # once only
    sessions.kw["bind"].dispose()


def test_sweeper_stamps_batches_left_open_with_nothing_active(
    sessions: sessionmaker[Session],
) -> None:
    settled, busy = _images(sessions, 2), _images(sessions, 2)
    with sessions() as s:
        empty = Batch(name="being submitted")
        s.add(empty)
        s.flush()
        lifecycle.mark_done(s, settled[:1])
        lifecycle.mark_failed(s, settled[1], ErrorCode.UNREADABLE, "unreadable")
        lifecycle.mark_done(s, busy[:1])
        s.commit()  # as a worker that died before stamping leaves them
        settled_batch = s.get(Image, settled[0]).batch_id  # type: ignore[union-attr]
        stamped = lifecycle.finish_open_batches(s)
        s.commit()
        assert stamped == [settled_batch]
        s.expire_all()
        assert s.get(Batch, settled_batch).finished_at is not None  # type: ignore[union-attr]
        assert s.get(Batch, empty.id).finished_at is None  # type: ignore[union-attr]
        assert lifecycle.finish_open_batches(s) == []


def test_prediction_upsert_keeps_one_row_per_image_and_model(
    sessions: sessionmaker[Session],
) -> None:
    ids = _images(sessions, 1)
    with sessions() as s:
        model_id = upsert_returning_id(s, ModelVersion, {
            "name": "m", "version": "1", "sha256": "ab", "preprocessing_version": "1",
            "classes": ["normal", "benign", "malignant"], "input_size": [8, 8], "path": "/m",
        }, conflict=("name", "version", "sha256"))
        again = upsert_returning_id(s, ModelVersion, {
            "name": "m", "version": "1", "sha256": "ab", "preprocessing_version": "1",
            "classes": ["normal", "benign", "malignant"], "input_size": [8, 8], "path": "/m",
        }, conflict=("name", "version", "sha256"))
        for p_mal in (0.2, 0.7):
            upsert(s, Prediction, [{
                "image_id": ids[0], "model_version_id": model_id, "preprocessing_version": "1",
                "label": "normal", "p_normal": 1 - p_mal, "p_benign": 0.0, "p_malignant": p_mal,
                "suspicion": 3, "decode_ms": 1.0, "preprocess_ms": 1.0, "infer_ms": 1.0,
                "forward_pass_id": "x", "forward_pass_size": 1,
            }], conflict=("image_id", "model_version_id"), update=("p_malignant", "p_normal"))
        s.commit()
        count = s.execute(select(func.count()).select_from(Prediction)).scalar_one()
        stored = s.execute(select(Prediction.p_malignant)).scalar_one()
    assert model_id == again
    assert count == 1
    assert stored == pytest.approx(0.7)


def test_stale_images_finds_lost_messages(sessions: sessionmaker[Session]) -> None:
    ids = _images(sessions, 3)
    now = utcnow()
    with sessions() as s:
        lifecycle.mark_enqueued(s, ids, now - timedelta(hours=2))
        lifecycle.mark_enqueued(s, ids[2:], now)
        s.commit()
        stale = lifecycle.stale_images(s, queued_before=now - timedelta(hours=1),
                                       claimed_before=now - timedelta(hours=1))
    assert stale == ids[:2]


def test_stale_images_counts_an_unsent_row_from_its_registration(
        sessions: sessionmaker[Session]) -> None:
    # A watcher between its block's commit and its send: a sweep in that gap re-sent the
    # images and warned that their messages were lost.
    _fresh, old = _images(sessions, 2)
    now = utcnow()
    with sessions() as s:
        s.execute(update(Image).where(Image.id == old).values(
            created_at=now - timedelta(hours=2)))
        s.commit()
        stale = lifecycle.stale_images(s, queued_before=now - timedelta(minutes=10),
                                       claimed_before=now - timedelta(minutes=10))
    assert stale == [old]  # a producer killed before sending is still found, in time
