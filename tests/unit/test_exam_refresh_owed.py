"""An exam refresh a worker owes after saving is kept in the database with the save: skipped
(the database busy) or cut off (the worker killed), the follow-up redoes it, even for an exam
that already had a result (a late view after the timeout)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch, register_files
from shared import exams
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory, upgrade
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Prediction, Study
from shared.enums import Priority
from shared.exams import (
    owe_exam_refresh,
    refresh_due_exams,
    refresh_exam_results,
    studies_awaiting_result,
    studies_of_images,
)
from shared.notify import Notifier
from shared.recovery import follow_up
from shared.synthetic import make_exam_set
from tests.helpers.old_schema import migrated_to
from worker import pipeline
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


@pytest.fixture
def quick_settings(settings: Settings) -> Settings:
    # An exam missing a view is due at once: the first three views get an incomplete result.
    return settings.model_copy(update={"exam_timeout_s": 0.001, "decode_processes": 0})


@pytest.fixture
def sessions(quick_settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(quick_settings)
    ensure_schema(engine)
    return make_session_factory(engine)


@contextmanager
def _busy_during_refresh(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside: another process (a watcher's burst) takes SQLite's write lock as a worker's
    exam refresh starts, and holds it longer than the refresh waits for it (2 s)."""
    held: list[sqlite3.Connection] = []

    def lock_then_look_up(session: Session, image_ids: Iterable[int]) -> set[int]:
        other = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
        other.execute("BEGIN IMMEDIATE")
        held.append(other)
        return studies_of_images(session, image_ids)

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "studies_of_images", lock_then_look_up)
        yield
    for other in held:
        other.rollback()
        other.close()


def _register(sessions: sessionmaker[Session], files: list[Path]) -> list[int]:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    return register_files(sessions, batch, files).new_ids


def _current(sessions: sessionmaker[Session]) -> tuple[int, str, list[str]]:
    with sessions() as s:
        exam = s.execute(select(ExamResult).where(ExamResult.superseded_at.is_(None))).scalar_one()
        return exam.version, exam.status, list(exam.missing_views)


def _late_view(sessions: sessionmaker[Session], runtime: WorkerRuntime,
               tmp_path: Path) -> list[int]:
    """Three views scored and timed out (an incomplete result, a view missing); the fourth
    view registered afterwards: its id."""
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=31)
    process_chunk(_register(sessions, files[:3]), token="first", runtime=runtime)
    version, status, missing = _current(sessions)
    assert (version, status, len(missing)) == (1, "incomplete", 1)
    return _register(sessions, files[3:])


def _follow_up(sessions: sessionmaker[Session], settings: Settings) -> int:
    """What each worker's sweeper runs on its timer; the exam results it wrote."""
    return follow_up(sessions, settings, Notifier(settings, sessions)).exams


def test_a_late_view_whose_refresh_met_a_busy_database_is_refreshed_by_the_follow_up(
    quick_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = WorkerRuntime(quick_settings)
    late = _late_view(sessions, runtime, tmp_path)

    with _busy_during_refresh(quick_settings, monkeypatch):
        result = process_chunk(late, token="late", runtime=runtime)

    assert result.done == 1
    # The refresh met the lock: the exam still reads incomplete, without the scored view.
    assert _current(sessions)[:2] == (1, "incomplete")
    assert _follow_up(sessions, quick_settings) == 1
    assert _current(sessions) == (2, "complete", [])
    # Settled: later passes have nothing more to recompute for it.
    with sessions() as s:
        assert studies_awaiting_result(s) == []
    assert _follow_up(sessions, quick_settings) == 0
    assert "stay owed, and the next follow-up recomputes them" in caplog.text


def test_a_worker_cut_off_between_its_save_and_the_refresh_leaves_the_refresh_owed(
    quick_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = WorkerRuntime(quick_settings)
    late = _late_view(sessions, runtime, tmp_path)

    def cut_off(runtime: WorkerRuntime, image_ids: list[int]) -> set[int]:
        raise SoftTimeLimitExceeded()  # the time limit (or a kill) strikes right here

    monkeypatch.setattr(pipeline, "_refresh_exams", cut_off)
    with pytest.raises(SoftTimeLimitExceeded):
        process_chunk(late, token="late", runtime=runtime)
    assert _current(sessions)[:2] == (1, "incomplete")

    assert _follow_up(sessions, quick_settings) == 1
    assert _current(sessions) == (2, "complete", [])


# An older release's database: an exam result computed before one of its images finished
# (study 1: its refresh was skipped), and one computed after (study 2).
_OLD_ROWS = (
    "INSERT INTO batches (id, name, priority, mode, submitted, duplicates) "
    "VALUES (1, 'night', 'routine', 'distributed', 3, 0)",
    "INSERT INTO studies (id, study_uid) VALUES (1, '1.2.1'), (2, '1.2.2')",
    "INSERT INTO images (id, identity, batch_id, study_id, source, format, state, attempts, "
    "finished_at) VALUES "
    "(1, 'sop:1', 1, 1, '/in/1.dcm', 'dicom', 'done', 1, '2026-12-01 08:00:00'), "
    "(2, 'sop:2', 1, 1, '/in/2.dcm', 'dicom', 'done', 1, '2026-12-01 09:00:00'), "
    "(3, 'sop:3', 1, 2, '/in/3.dcm', 'dicom', 'done', 1, '2026-12-01 08:00:00')",
    "INSERT INTO exam_results (study_id, version, status, reason, per_breast, views, "
    "missing_views, flags, n_images, n_failed, signature, created_at) VALUES "
    "(1, 1, 'incomplete', 'timeout', '{}', '[]', '[]', '[]', 1, 0, 's1', "
    "'2026-12-01 08:30:00'), "
    "(2, 1, 'incomplete', 'timeout', '{}', '[]', '[]', '[]', 1, 0, 's2', "
    "'2026-12-01 08:30:00')",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_marks_exam_results_older_than_one_of_their_images_as_owed(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    migrated_to(url, ("0002", "0004", "0006"), *_OLD_ROWS)
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]

    upgrade(engine)

    with make_session_factory(engine)() as s:
        assert studies_awaiting_result(s) == [1]
        assert s.execute(text("SELECT id, exam_inputs_seq, exam_result_seq FROM studies "
                              "ORDER BY id")).all() == [(1, 1, 0), (2, 0, 0)]
    engine.dispose()


def _scored(session: Session, image_id: int) -> None:
    session.execute(update(Image).where(Image.id == image_id).values(state="done"))
    session.add(Prediction(image_id=image_id, model_version_id=1, preprocessing_version="1",
                           label="malignant", p_normal=0.05, p_benign=0.05, p_malignant=0.9,
                           suspicion=10, decode_ms=1, preprocess_ms=1, infer_ms=1,
                           forward_pass_id="x", forward_pass_size=1))


def test_a_save_committed_while_a_refresh_reads_stays_owed(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_db_engine(Settings(database_url=postgres_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        s.add_all([Batch(id=1, name="b"), Study(id=1, study_uid="1.2.1"),
                   ModelVersion(id=1, name="m", version="1", sha256="0" * 64,
                                preprocessing_version="1", classes=["a"], input_size=[1, 1],
                                path="/m")])
        s.flush()
        for n, (lat, view) in enumerate([("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")],
                                        start=1):
            s.add(Image(id=n, identity=f"sop:{n}", batch_id=1, study_id=1, source=f"/{n}",
                        format="dicom", laterality=lat, view=view, state="failed"))
        s.flush()
        for n in (1, 2, 3):
            _scored(s, n)
        owe_exam_refresh(s, [1, 2, 3, 4])  # the save of the failed R-MLO: its refresh owed
        s.commit()
    load = exams._load_images

    def retry_saved_after_the_read(session: Session, study_ids: list[int]) -> object:
        images = load(session, study_ids)
        with sessions() as other:  # the retried R-MLO is scored and saved meanwhile
            _scored(other, 4)
            owe_exam_refresh(other, [4])
            other.commit()
        return images

    with monkeypatch.context() as patched, sessions() as s:
        patched.setattr(exams, "_load_images", retry_saved_after_the_read)
        [first] = refresh_exam_results(s, [1], timeout_s=600)
        s.commit()
    assert first.status == "incomplete"  # computed from what it read: R-MLO failed
    with sessions() as s:
        assert studies_awaiting_result(s) == [1]  # the save after that read stays owed
        [second] = refresh_due_exams(s, timeout_s=600)
        assert (second.version, second.status) == (2, "complete")
        assert studies_awaiting_result(s) == []
    engine.dispose()
