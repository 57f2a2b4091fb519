"""Registration stamps its rows on the database's clock, the one they are judged on.

An image's ``created_at`` starts its exam's time-out and, until its message is sent, its
queued age (the sweeper's "committed but never sent" rule); both are judged on the
database's clock (``database_now``). Stamped on the producer's own clock, a producer 40
minutes behind a PostgreSQL server closed a fresh exam as incomplete at once, and a sweep
between the commit and the send re-sent the new rows as lost; 40 minutes ahead, a missing
view waited 70 minutes. Here the producer's clock (every ``utcnow`` registration reads) is
set 40 minutes off a real PostgreSQL server's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch, register_files
from producer.watch import ingest
from producer.watch.folder import WatchFolder
from shared import exams
from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.clock import database_now
from shared.db.schema import Batch, DuplicateSubmission, ExamResult, Image, Study
from shared.enums import ErrorCode, ImageState, Priority
from shared.queue import create_celery_app
from shared.synthetic import make_exam_set
from shared.timeutil import as_utc
from tests.helpers.bad_inputs import good_dicom
from tests.helpers.clock import host_clock_off_by, server_now
from tests.helpers.db import schema_sessions

SKEW = timedelta(minutes=40)
NEAR = timedelta(seconds=30)


@pytest.fixture
def settings(postgres_url: str) -> Settings:
    return Settings(database_url=postgres_url, broker_url=None, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _producer_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    host_clock_off_by(monkeypatch, offset, (clock,), raising=True)


def _batch(sessions: sessionmaker[Session]) -> int:
    return create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")


def _stale(sessions: sessionmaker[Session]) -> list[int]:
    """What a sweep now would re-send as lost, with a 10-minute long-queued rule."""
    with sessions() as session:
        cutoff = database_now(session) - timedelta(minutes=10)
        return lifecycle.stale_images(session, queued_before=cutoff, claimed_before=cutoff)


@pytest.mark.parametrize("offset", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_registration_stamps_every_row_on_the_servers_clock(
        sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        offset: timedelta) -> None:
    _producer_clock_off_by(monkeypatch, offset)
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=7)[:3]
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"not an image at all")
    first = register_files(sessions, _batch(sessions), [*files, junk])
    again = register_files(sessions, _batch(sessions), files[:1])  # sent twice
    assert len(first.new_ids) == 3 and len(first.rejected_ids) == 1
    assert len(again.duplicates) == 1
    server_time = server_now(sessions)
    with sessions() as session:
        stamps = [
            *session.execute(select(Image.created_at)).scalars(),
            *session.execute(select(Image.finished_at).where(
                Image.state == ImageState.FAILED.value)).scalars(),
            *session.execute(select(Study.created_at)).scalars(),
            *session.execute(select(DuplicateSubmission.created_at)).scalars(),
        ]
    assert len(stamps) == 3 + 1 + 1 + 1 + 1
    for stamp in stamps:
        moment = as_utc(stamp)
        assert moment is not None and abs(moment - server_time) < NEAR

    # Committed, not yet sent: no sweep takes the fresh rows for lost messages.
    assert _stale(sessions) == []
    # Three views of four, failed at once: the fourth still has the time-out's 30 minutes.
    with sessions() as session:
        session.execute(update(Image).where(Image.id.in_(first.new_ids))
                        .values(state=ImageState.FAILED.value))
        exams.refresh_exam_results(session, exams.studies_of_images(session, first.new_ids),
                                   timeout_s=1800)
        session.commit()
        assert session.execute(select(func.count()).select_from(ExamResult)).scalar_one() == 0


def _failed_truncated_a_minute_ago(sessions: sessionmaker[Session], image_id: int) -> None:
    """A worker failed it as truncated, stamped on the server's clock."""
    with sessions() as session:
        session.execute(update(Image).where(Image.id == image_id).values(
            state=ImageState.FAILED.value, error_code=ErrorCode.TRUNCATED.value,
            error_message="cut short", finished_at=func.now() - timedelta(seconds=60)))
        session.commit()


def _written_on_this_host(path: Path, offset: timedelta, ago: timedelta) -> None:
    """``path``'s mtime as a host whose clock is ``offset`` off stamps a write ``ago``."""
    when = (datetime.now(UTC) + offset - ago).timestamp()
    os.utime(path, (when, when))


def test_a_file_completed_after_its_failure_is_retried_on_a_host_behind(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `mammo submit` of the complete file (no watcher to have seen it written): written
    # after the failure, though this host's clock stamps it 40 minutes before it.
    _producer_clock_off_by(monkeypatch, -SKEW)
    path = good_dicom(tmp_path / "x.dcm", 1)
    (image_id,) = register_files(sessions, _batch(sessions), [path]).new_ids
    _failed_truncated_a_minute_ago(sessions, image_id)
    _written_on_this_host(path, -SKEW, timedelta(0))
    again = register_files(sessions, _batch(sessions), [path])
    assert again.retried == {image_id: ErrorCode.TRUNCATED.value}
    with sessions() as session:
        created = as_utc(session.execute(select(Image.created_at)
                                         .where(Image.id == image_id)).scalar_one())
    assert created is not None and abs(created - server_now(sessions)) < NEAR
    assert _stale(sessions) == []


def test_a_file_unchanged_since_its_failure_is_not_retried_on_a_host_ahead(
        sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The half file itself, submitted again: written before the failure, though this
    # host's clock stamps it 40 minutes after. The worker would only fail it again.
    _producer_clock_off_by(monkeypatch, SKEW)
    path = good_dicom(tmp_path / "x.dcm", 1)
    (image_id,) = register_files(sessions, _batch(sessions), [path]).new_ids
    _written_on_this_host(path, SKEW, timedelta(minutes=2))
    _failed_truncated_a_minute_ago(sessions, image_id)
    again = register_files(sessions, _batch(sessions), [path])
    assert again.retried == {}
    assert [(image, state) for _, image, state in again.duplicates] == [(image_id, "failed")]


def test_the_watchers_day_batch_is_the_databases_day(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Past midnight by the server, a minute before it by the watcher's clock: the day
    # batch summarised at the server's midnight must not take the new day's files.
    server_time = server_now(sessions)
    midnight = datetime.combine(server_time.date(), datetime.min.time(), tzinfo=UTC)
    behind = -(server_time - midnight) - timedelta(minutes=1)

    host_clock_off_by(monkeypatch, behind, (clock, ingest))
    ingestor = ingest.Ingestor(settings, sessions, create_celery_app(settings.embedded()),
                               WatchFolder.of(tmp_path, ()),
                               logging.getLogger("test"), mode="watch")
    with sessions() as session:
        batch = session.get(Batch, ingestor.batch_id())
    assert batch is not None and batch.name is not None
    assert batch.name.endswith(server_time.date().isoformat())
