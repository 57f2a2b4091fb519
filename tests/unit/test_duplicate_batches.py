"""A batch that sent already-known files again waits for, and shows, those files' originals.

A copy creates no image: it is a ``duplicate_submissions`` row naming the original. While the
original is still queued or processing, the batch that sent the copy is not finished, and
``mammo status`` counts the copy under its original's state (as ``mammo results --batch``
lists it), so a batch made only of copies no longer reads "finished, total 0" at once.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch
from shared.db import lifecycle
from shared.db.schema import Batch, DuplicateSubmission
from shared.enums import Priority
from shared.queries import batch_status
from tests.helpers.db import queued_batch


@pytest.fixture
def sessions(each_backend_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    return each_backend_sessions


def _copies(sessions: sessionmaker[Session], image_ids: list[int],
            priority: Priority = Priority.URGENT) -> int:
    """A batch made only of copies of ``image_ids`` (as registration records them)."""
    batch_id = create_batch(sessions, name="copies", priority=priority, mode="distributed")
    with sessions() as session:
        session.add_all(DuplicateSubmission(batch_id=batch_id, image_id=i, source=f"/u/{i}.png")
                        for i in image_ids)
        session.commit()
    return batch_id


def _finish(sessions: sessionmaker[Session], image_ids: list[int]) -> list[int]:
    """What a worker does: mark the images done, then stamp the batches they finish."""
    with sessions() as session:
        lifecycle.mark_done(session, image_ids)
        session.commit()
    with sessions() as session:
        stamped = lifecycle.finish_batches(session, lifecycle.batch_ids_of(session, image_ids))
        session.commit()
    return stamped


def _finished_at(sessions: sessionmaker[Session], batch_id: int) -> object:
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch.finished_at


def test_a_batch_of_copies_finishes_with_their_originals_not_before(
    sessions: sessionmaker[Session],
) -> None:
    routine, images = queued_batch(sessions, "R2", 8)
    copies = _copies(sessions, images[:4])
    with sessions() as session:
        # What `mammo submit` does once the copies are registered: nothing to stamp yet.
        assert lifecycle.finish_batches(session, [copies]) == []
        assert lifecycle.finish_open_batches(session) == []
        session.commit()
        assert lifecycle.batch_ids_of(session, images[:1]) == sorted([routine, copies])
    assert _finished_at(sessions, copies) is None

    assert _finish(sessions, images[:3]) == []  # one original still queued
    assert _finish(sessions, images[3:4]) == [copies]  # the worker finishing it stamps it
    assert _finished_at(sessions, copies) is not None
    assert _finished_at(sessions, routine) is None
    assert _finish(sessions, images[4:]) == [routine]


def test_the_sweeper_stamps_a_batch_of_copies_left_open_once_its_originals_are_done(
    sessions: sessionmaker[Session],
) -> None:
    _, images = queued_batch(sessions, "R", 2)
    copies = _copies(sessions, images)
    with sessions() as session:
        lifecycle.mark_done(session, images)
        session.commit()  # a worker that died before stamping leaves it so
        assert copies in lifecycle.finish_open_batches(session)
        session.commit()


def test_status_counts_copies_under_their_originals_states(
    sessions: sessionmaker[Session],
) -> None:
    _, images = queued_batch(sessions, "R2", 8)
    own, mine = queued_batch(sessions, "mixed", 2)
    with sessions() as session:
        session.add_all(DuplicateSubmission(batch_id=own, image_id=i, source=f"/m/{i}.png")
                        for i in images[:3])
        session.commit()
    with sessions() as session:
        lifecycle.mark_done(session, images[:1])
        session.commit()
    copies = _copies(sessions, images[:4])
    with sessions() as session:
        only_copies = batch_status(session, copies)
        mixed = batch_status(session, own)
    assert only_copies is not None and mixed is not None
    row = only_copies.as_row()
    # Its total is its own images (none), as its report counts them; the copies apart.
    assert (row["total"], row["copies"], row["queued"], row["done"], row["finished_at"]) == (
        0, 4, 3, 1, None)
    # Not finished: no ETA of 0 for the 3 left (unrounded: on SQLite, whose creation time
    # has whole seconds, the first finish can come a fraction of a second after it, and a
    # rounded ETA of 0.2 s read as 0).
    assert only_copies.remaining == 3 and only_copies.eta_seconds != 0
    row = mixed.as_row()
    assert (row["total"], row["copies"], row["queued"], row["done"]) == (2, 3, 4, 1)
    assert mixed.total == len(mine)  # the batch's own (new) images, as notifications count
