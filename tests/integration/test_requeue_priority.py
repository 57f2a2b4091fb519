"""Re-sent work keeps its priority, through real Redis priority queues.

`mammo recover` and the workers' sweeper re-send the messages Redis lost. An urgent batch's
images must come back urgent, in chunks of their own, and leave the broker before any routine
chunk; a routine image that an urgent batch sent again (a duplicate) is urgent too, and
`mammo submit --priority urgent` of copies of still-queued files sends them again at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch
from producer.submission import submit
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, DuplicateSubmission
from shared.enums import Priority
from shared.queries import batch_status
from shared.queue import QUEUE_NAME, create_celery_app, enqueue_by_priority
from shared.recovery import sweep
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.db import queued_batch

pytestmark = pytest.mark.integration


@pytest.fixture
def wiring(tmp_path: Path, redis_url: str) -> Iterator[tuple[Settings, sessionmaker[Session],
                                                             Celery]]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'q.db'}", broker_url=redis_url,
                        chunk_size=4, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    app = create_celery_app(settings)
    yield settings, make_session_factory(engine), app
    app.close()
    engine.dispose()


def _batch(sessions: sessionmaker[Session], name: str, priority: Priority, n: int) -> list[int]:
    """A batch of ``n`` queued images whose messages were never seen (Redis lost them)."""
    return queued_batch(sessions, name, n, priority)[1]


def _drain(app: Celery) -> list[list[int]]:
    """Every chunk in the broker, in the order a worker would receive them."""
    chunks = []
    with app.connection_for_read() as conn, conn.channel() as channel:
        while (message := channel.basic_get(QUEUE_NAME, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()  # Celery's message protocol 2
            chunks.append(list(args[0]))
    return chunks


def test_recover_sends_urgent_work_first_in_chunks_of_its_own(
    wiring: tuple[Settings, sessionmaker[Session], Celery],
) -> None:
    settings, sessions, app = wiring
    routine = _batch(sessions, "R", Priority.ROUTINE, 10)
    urgent = _batch(sessions, "U", Priority.URGENT, 3)

    report = sweep(sessions, app, settings, queued_older_than_s=0, force=True)

    assert sorted(report.requeued) == sorted(routine + urgent)
    chunks = _drain(app)
    assert report.messages == len(chunks) == 1 + 3  # 3 urgent ids; 10 routine in 4s
    # The urgent chunk leaves the broker first, and no chunk mixes the two batches.
    assert chunks[0] == urgent
    assert sorted(i for chunk in chunks[1:] for i in chunk) == routine
    assert all(set(chunk) <= set(routine) for chunk in chunks[1:])


def test_an_image_an_urgent_batch_sent_again_is_re_sent_as_urgent(
    wiring: tuple[Settings, sessionmaker[Session], Celery],
) -> None:
    settings, sessions, app = wiring
    routine = _batch(sessions, "R", Priority.ROUTINE, 8)
    copies = create_batch(sessions, name="U", priority=Priority.URGENT, mode="distributed")
    with sessions() as session:
        session.add_all(DuplicateSubmission(batch_id=copies, image_id=i, source=f"/u/{i}.png")
                        for i in routine[5:])
        session.commit()

    sweep(sessions, app, settings, queued_older_than_s=0, force=True)

    chunks = _drain(app)
    assert chunks[0] == routine[5:]
    assert sorted(i for chunk in chunks[1:] for i in chunk) == routine[:5]


def test_resubmitting_queued_files_as_urgent_sends_them_again_as_urgent(
    wiring: tuple[Settings, sessionmaker[Session], Celery], tmp_path: Path,
) -> None:
    settings, sessions, app = wiring
    night, again = tmp_path / "R2", tmp_path / "R2urgent"
    night.mkdir()
    again.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        write_png(night / f"{i}.png", synth_mammogram(rng, size=(96, 80)))
    for i in (1, 5):  # the same bytes under other names: duplicates of queued images
        shutil.copy(night / f"{i}.png", again / f"copy-{i}.png")
    routine = submit(settings, sessions, app, [night], name="R2")
    urgent = submit(settings, sessions, app, [again], name="R2urgent",
                    priority=Priority.URGENT)

    assert (len(urgent.queued), len(urgent.duplicates), urgent.messages) == (0, 2, 1)
    originals = sorted(image_id for _, image_id, _ in urgent.duplicates)
    assert urgent.requeued == originals
    chunks = _drain(app)
    assert chunks[0] == originals  # served before the routine chunks that also hold them
    assert sorted(i for chunk in chunks[1:] for i in chunk) == sorted(routine.queued)

    with sessions() as session:
        # Not finished while its copies' originals wait; status shows them waiting.
        batch = session.get(Batch, urgent.batch_id)
        assert batch is not None and batch.finished_at is None
        status = batch_status(session, urgent.batch_id)
        assert status is not None
        row = status.as_row()  # its total is its own images (none): its copies apart
        assert (row["total"], row["copies"], row["queued"]) == (0, 2, 2)
        # Two messages for one queued image process it once: the first claim wins.
        taken = lifecycle.claim(session, originals, token="urgent-chunk", lease_s=600)
        assert [c.id for c in taken] == originals
        assert lifecycle.claim(session, originals, token="routine-chunk", lease_s=600) == []
        lifecycle.mark_done(session, originals)
        session.commit()
        assert lifecycle.finish_batches(
            session, lifecycle.batch_ids_of(session, originals)) == [urgent.batch_id]
        session.commit()


def test_resubmitting_queued_files_at_the_same_priority_sends_nothing(
    wiring: tuple[Settings, sessionmaker[Session], Celery], tmp_path: Path,
) -> None:
    settings, sessions, app = wiring
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", synth_mammogram(np.random.default_rng(4), size=(96, 80)))
    submit(settings, sessions, app, [folder])
    _drain(app)
    again = submit(settings, sessions, app, [folder], name="again")
    assert (again.messages, again.requeued, _drain(app)) == (0, [], [])


def test_a_timed_out_urgent_chunk_comes_back_urgent_one_image_per_message(
    wiring: tuple[Settings, sessionmaker[Session], Celery],
) -> None:
    from worker.runtime import WorkerRuntime
    from worker.tasks import _requeue_one_by_one

    settings, sessions, app = wiring
    routine = _batch(sessions, "R", Priority.ROUTINE, 4)
    urgent = _batch(sessions, "U", Priority.URGENT, 2)
    with sessions() as session:  # the routine chunk is in the broker before
        lifecycle.claim(session, urgent, token="chunk-1", lease_s=600)
    enqueue_by_priority(app, {Priority.ROUTINE: routine}, chunk_size=4)
    _requeue_one_by_one(app, WorkerRuntime(settings), urgent, "chunk-1")
    assert _drain(app) == [[urgent[0]], [urgent[1]], routine]
