"""An exam's time-out is counted on the database's clock, the clock its images' times come
from: a follow-up on a host running ahead must not close an exam as incomplete before its
missing view had the time the setting gives it, nor a producer running behind register
views already past it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.registration import create_batch, register_files
from shared import exams
from shared.config import Settings
from shared.db import clock
from shared.db.schema import ExamResult, Image
from shared.enums import ImageState, Priority
from shared.synthetic import make_exam_set
from tests.helpers.clock import host_clock_off_by
from tests.helpers.db import schema_sessions

TIMEOUT_S = 1800.0


@pytest.fixture
def sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    settings = Settings(database_url=postgres_url, _env_file=None)  # type: ignore[call-arg]
    yield from schema_sessions(settings)


def _three_views_of_four_done(sessions: sessionmaker[Session], tmp_path: Path) -> list[int]:
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=7)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, files[:3]).new_ids
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(state=ImageState.FAILED.value))
        session.commit()
    return ids


def _refresh(sessions: sessionmaker[Session], ids: list[int]) -> int:
    with sessions() as session:
        studies = exams.studies_of_images(session, ids)
        exams.refresh_exam_results(session, studies, timeout_s=TIMEOUT_S)
        session.commit()
        return len(session.execute(select(ExamResult)).scalars().all())


@pytest.mark.parametrize("offset_min", [40, -40])
def test_the_exam_time_out_runs_on_the_database_clock(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        offset_min: int) -> None:
    # One host's clock, the producer's that registered the views included: their times
    # are stamped on the database's clock, the one the time-out is counted on. raising=False:
    # a module that no longer reads this host's clock (exams) stays in the list, so that
    # one that starts to again is skewed with the rest.
    host_clock_off_by(monkeypatch, timedelta(minutes=offset_min), (exams, clock, registration))
    ids = _three_views_of_four_done(sessions, tmp_path)
    # Registered a moment ago by the server's clock: the fourth view still has 30 minutes,
    # whatever this host's clock says.
    assert _refresh(sessions, ids) == 0
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(ids))
                        .values(created_at=Image.created_at - timedelta(seconds=TIMEOUT_S + 60)))
        session.commit()
    # Past the time-out by the server's clock: closed as incomplete, even on a host behind.
    assert _refresh(sessions, ids) == 1
