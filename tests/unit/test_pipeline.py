"""The chunk pipeline in-process: one forward pass per chunk, bad images fail alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.bilateral import BilateralHead
from producer.embedded_run import EmbeddedWorkerDied, run_embedded
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, Prediction
from shared.enums import Priority
from shared.errors import DatabaseUnavailableError
from shared.scoring import suspicion
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.tiny_model import TINY_BILATERAL
from worker import pipeline
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _register(sessions: sessionmaker[Session], files: list[Path]) -> list[int]:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    reg = register_files(sessions, batch, files)
    return reg.new_ids


def test_chunk_is_one_forward_pass_and_a_bad_image_fails_alone(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=5)
    write_truncated_copy(files[0], tmp_path / "in" / "bad.dcm")
    ids = _register(sessions, [*files, tmp_path / "in" / "bad.dcm"])
    runtime = WorkerRuntime(settings)

    result = process_chunk(ids, token="task-1", runtime=runtime)

    assert (result.claimed, result.done, result.failed) == (5, 4, 1)
    assert result.forward_passes == 1
    assert runtime.classifier.forward_passes == 1
    with sessions() as s:
        sizes = s.execute(select(Prediction.forward_pass_size).distinct()).scalars().all()
        bad = s.execute(select(Image).where(Image.source.like("%bad.dcm"))).scalar_one()
    assert sizes == [4]
    assert bad.state == "failed" and bad.error_code == "truncated"

    # The same message delivered again finds nothing to do and writes nothing.
    again = process_chunk(ids, token="task-2", runtime=runtime)
    assert again.claimed == 0
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(Prediction)).scalar_one() == 4


def test_redelivered_chunk_runs_image_by_image(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=6))
    runtime = WorkerRuntime(settings)
    with sessions() as s:  # a first delivery that died after claiming
        from shared.db.lifecycle import claim

        claim(s, ids, token="task-1", lease_s=600)
    result = process_chunk(ids, token="task-1", runtime=runtime)
    assert result.done == 4 and result.forward_passes == 4


def test_poison_image_is_quarantined_after_max_attempts(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=7)[:1])
    runtime = WorkerRuntime(settings)
    from shared.db.lifecycle import claim

    with sessions() as s:
        for _ in range(settings.max_attempts):
            claim(s, ids, token="crashing-task", lease_s=600)
    result = process_chunk(ids, token="crashing-task", runtime=runtime)
    assert (result.done, result.failed) == (0, 1)
    with sessions() as s:
        image = s.get(Image, ids[0])
    assert image is not None and image.error_code == "poison"
    assert "crashed" in (image.error_message or "")


def test_embedded_run_goes_through_celery(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=2, seed=8)
    outcome = run_embedded(settings, sessions, [tmp_path / "in"], name="embedded")
    assert len(outcome.submission.queued) == len(files) == 8
    assert outcome.submission.messages == 2  # chunk_size 4
    with sessions() as s:
        passes = s.execute(select(func.count(func.distinct(Prediction.forward_pass_id))))
        assert passes.scalar_one() == 2
        assert s.execute(select(func.count()).select_from(Prediction)).scalar_one() == 8


def test_worker_scores_the_exam_once_its_four_views_are_done(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    from shared.db.schema import ExamResult

    files = make_exam_set(tmp_path / "in", n_exams=1, seed=9)
    ids = _register(sessions, files)
    runtime = WorkerRuntime(settings)
    process_chunk(ids[:2], token="first-half", runtime=runtime)
    with sessions() as s:
        assert s.execute(select(ExamResult)).scalars().all() == []  # 2 of 4 views: not yet
    process_chunk(ids[2:], token="second-half", runtime=runtime)
    with sessions() as s:
        [exam] = s.execute(select(ExamResult)).scalars().all()
        views = {(lat, view): np.array([[p_n, p_b, p_m]]) for lat, view, p_n, p_b, p_m in
                 s.execute(select(Image.laterality, Image.view, Prediction.p_normal,
                                  Prediction.p_benign, Prediction.p_malignant)
                           .join(Prediction, Prediction.image_id == Image.id))}
    assert exam.status == "complete" and exam.missing_views == []
    # The exam score is the most suspicious view, each read against the other breast's
    # same view with the model's bilateral head.
    head = BilateralHead.from_config(TINY_BILATERAL)
    paired = [head.apply(probs, views[("R" if lat == "L" else "L", view)])[0]
              for (lat, view), probs in views.items()]
    assert len(paired) == 4
    assert exam.suspicion == max(suspicion(p[1], p[2]) for p in paired)


@pytest.mark.parametrize("cause", [RuntimeError("a bug in the chunk code"),
                                   DatabaseUnavailableError("disk full")])
def test_an_embedded_run_stops_with_the_reason_when_a_chunk_fails_for_good(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, cause: Exception,
) -> None:
    """A chunk whose task failed (its retries spent) never finishes: the run must say so
    and stop, not wait forever, and its images must stay queued for the next run."""
    import worker.tasks

    def fails(image_ids: list[int], **_: object) -> None:
        raise cause

    monkeypatch.setattr(worker.tasks, "process_chunk", fails)
    monkeypatch.setattr(worker.tasks, "TRANSIENT_RETRIES", 0)  # spent at once
    make_exam_set(tmp_path / "in", n_exams=1, seed=8)
    with pytest.raises(type(cause) if isinstance(cause, DatabaseUnavailableError)
                       else EmbeddedWorkerDied) as raised:
        run_embedded(settings, sessions, [tmp_path / "in"], name="doomed")
    assert str(raised.value).startswith("4 image(s) cannot be finished in this run: ")
    assert str(cause) in str(raised.value) and "mammo recover" in str(raised.value)
    with sessions() as s:
        states = s.execute(select(Image.state)).scalars().all()
    assert sorted(states) == ["queued"] * 4  # nothing lost, nothing half-done


def test_a_refused_save_refunds_the_attempts_so_retries_never_make_poison(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A database that accepts claims but refuses results (a trigger, a full tablespace for
    # one table): each retry's claim counted an attempt, and healthy images became poison.
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=8))
    runtime = WorkerRuntime(settings)
    real_store = pipeline.store_predictions

    def refusing(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO predictions", {}, Exception("disk full"))

    monkeypatch.setattr(pipeline, "store_predictions", refusing)
    for _ in range(settings.max_attempts + 2):  # more retries than attempts allowed
        with pytest.raises(DatabaseUnavailableError, match="disk full"):
            process_chunk(ids, token="task-1", runtime=runtime)
        with sessions() as s:
            states = s.execute(select(Image.state, Image.attempts)).all()
        assert sorted(states) == [("queued", 0)] * 4
    monkeypatch.setattr(pipeline, "store_predictions", real_store)
    result = process_chunk(ids, token="task-1", runtime=runtime)
    assert (result.done, result.failed, result.forward_passes) == (4, 0, 1)


def test_a_live_chunk_renews_its_claims_so_no_one_takes_them(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The lease is only four heartbeats: a chunk slower than that must keep its images.
    settings = settings.model_copy(update={"claim_heartbeat_s": 1})
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=9))
    runtime = WorkerRuntime(settings)
    real_run_group = pipeline._run_group
    stolen: list[int] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(settings.claim_lease_s + 1.5)  # longer than a lease without renewal
        with sessions() as s:
            stolen.extend(c.id for c in lifecycle.claim(s, ids, token="another-task",
                                                        lease_s=settings.claim_lease_s))
        return real_run_group(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_run_group", slow)
    result = process_chunk(ids, token="task-1", runtime=runtime)
    assert stolen == [] and result.done == 4


def test_a_worker_whose_images_were_taken_over_writes_nothing(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker stalled past its lease (its database link hung) comes back after another
    worker took its images over: it must neither overwrite that worker's result nor flip
    its state; the images stay the other claim's."""
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=10))
    runtime = WorkerRuntime(settings)
    real_run_group = pipeline._run_group

    def taken_over(*args: Any, **kwargs: Any) -> Any:
        outcome = real_run_group(*args, **kwargs)
        with sessions() as s:  # what a sweeper's re-sent message lets another worker do
            s.execute(update(Image).where(Image.id.in_(ids[:3]))
                      .values(claim_token="another-task"))
            s.commit()
        return outcome

    monkeypatch.setattr(pipeline, "_run_group", taken_over)
    result = process_chunk(ids, token="task-1", runtime=runtime)
    assert (result.claimed, result.done, result.failed) == (4, 1, 0)
    with sessions() as s:
        states = dict(s.execute(select(Image.id, Image.state)).all())
        predicted = s.execute(select(Prediction.image_id)).scalars().all()
    assert [states[i] for i in ids] == ["processing"] * 3 + ["done"]
    assert predicted == [ids[3]]


def test_a_save_cut_by_an_outage_still_refunds_once_the_database_is_back(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refund itself met the outage: it waits for the database instead of leaving the
    attempt counted, so a flapping link never quarantines healthy images."""
    settings = settings.model_copy(update={"max_attempts": 1})
    ids = _register(sessions, make_exam_set(tmp_path / "in", n_exams=1, seed=11))
    runtime = WorkerRuntime(settings)
    real_store, real_release = pipeline.store_predictions, lifecycle.release
    refusals = {"release": 2}

    def refusing(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO predictions", {}, Exception("connection reset"))

    def flapping(*args: Any, **kwargs: Any) -> list[int]:
        if refusals["release"]:
            refusals["release"] -= 1
            raise OperationalError("UPDATE images", {}, Exception("connection refused"))
        return real_release(*args, **kwargs)

    monkeypatch.setattr(pipeline, "store_predictions", refusing)
    monkeypatch.setattr(lifecycle, "release", flapping)
    with pytest.raises(DatabaseUnavailableError, match="connection reset"):
        process_chunk(ids, token="task-1", runtime=runtime)
    assert refusals["release"] == 0
    with sessions() as s:
        assert sorted(s.execute(select(Image.state, Image.attempts)).all()) == [("queued", 0)] * 4
    monkeypatch.setattr(pipeline, "store_predictions", real_store)
    result = process_chunk(ids, token="task-1", runtime=runtime)
    assert (result.done, result.failed) == (4, 0)  # not poison at MAMMO_MAX_ATTEMPTS=1
