"""`mammo watch` as a real process on real filesystem events: complete files only, nothing
missed, nothing processed twice, exams grouped, a vanishing folder survived."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from shared.db.schema import ExamResult, Image, Prediction
from shared.enums import ImageState, Laterality, View
from shared.synthetic import make_exam_set, synth_mammogram, write_dicom
from tests.helpers.processes import (
    WatchProcess,
    WorkerProcess,
    mammo_env,
    run_mammo,
    wait_for,
)

pytestmark = pytest.mark.integration
KEY = "integration-test-key-0123456789abcdef"  # synthetic files carry a PatientID


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def scalar(self, stmt: object) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(stmt).scalar_one())  # type: ignore[call-overload]
        except OperationalError:  # the watcher has not created the schema yet
            return 0

    def count(self, state: str | None = None) -> int:
        stmt = select(func.count()).select_from(Image)
        return self.scalar(stmt.where(Image.state == state) if state else stmt)

    def predictions_per_image(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(func.count()).select_from(Prediction)
                                     .group_by(Prediction.image_id)).scalars())

    def sources(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {Path(s).name: st for s, st in conn.execute(select(Image.source, Image.state))}


def _stalled(db: Db, watcher: WatchProcess, worker: WorkerProcess) -> str:
    """What a stalled burst leaves to read: the images per state, and both processes' ends
    (one CI run once saw 0 of 2,000 done with only the watcher's log to go on)."""
    states = {state.value: db.count(state.value) for state in ImageState}
    exits = f"watcher exit {watcher.proc.poll()}, worker exit {worker.proc.poll()}"
    return (f"images by state: {states} ({exits})\n--- watcher ---\n{watcher.log()[-3000:]}"
            f"\n--- worker ---\n{worker.log()[-3000:]}")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    database = Db(f"sqlite:///{tmp_path / 'watch.db'}")
    yield database
    database.engine.dispose()


def _env(tmp_path: Path, model: Path | None, **extra: str) -> dict[str, str]:
    settings = {"database_url": f"sqlite:///{tmp_path / 'watch.db'}",
                "model": str(model) if model else None, "watch_quiet_period_s": "1",
                "watch_poll_interval_s": "0.5", "watch_reconcile_interval_s": "5",
                "log_level": "INFO", "patient_id_key": KEY, **extra}
    return mammo_env(**settings)


def _one_dicom(path: Path, n: int, size: tuple[int, int] = (96, 80),
               study: str = "1.2.826.0.1.77") -> bytes:
    pixels = synth_mammogram(np.random.default_rng(n), size=size)
    scratch = path.parent / f".scratch-{n}"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(scratch, pixels, study_uid=f"{study}.{n}", sop_uid=f"{study}.{n}.1",
                laterality=Laterality.LEFT, view=View.CC)
    data = scratch.read_bytes()
    scratch.unlink()
    return data


def _slow_write(path: Path, data: bytes, chunks: int, pause_s: float) -> None:
    """A scanner that reopens, appends and closes per chunk: close-write fires every time."""
    step = len(data) // chunks + 1
    for start in range(0, len(data), step):
        with path.open("ab") as handle:
            handle.write(data[start:start + step])
        time.sleep(pause_s)


def test_only_complete_files_are_processed_and_each_exactly_once(
        tmp_path: Path, tiny_model_dir: Path, db: Db) -> None:
    incoming = tmp_path / "incoming"
    make_exam_set(incoming / "before start", n_exams=1, seed=11)  # present before start
    outside = tmp_path / "outside"
    (outside).mkdir()
    (outside / "secret.dcm").write_bytes(_one_dicom(outside / "x", 90))
    watcher = WatchProcess(_env(tmp_path, tiny_model_dir), tmp_path, incoming)
    try:
        wait_for(lambda: db.count("done") == 4, timeout=150, what="pre-existing exam",
                 on_timeout=watcher.log)
        # A slow scanner: pauses longer than the quiet period, a close after every chunk.
        slow = _one_dicom(incoming / "x", 1, size=(512, 416))
        _slow_write(incoming / "slow scanner ö.dcm", slow, chunks=6, pause_s=1.6)
        # Write to a temporary name, then rename into place.
        (incoming / "renamed.dcm.part").write_bytes(_one_dicom(incoming / "x", 2))
        os.rename(incoming / "renamed.dcm.part", incoming / "renamed.dcm")
        # The same image under a second name, and a link to a file outside the folder.
        shutil.copy(incoming / "renamed.dcm", incoming / "copy of renamed.dcm")
        (incoming / "link.dcm").symlink_to(outside / "secret.dcm")
        wait_for(lambda: db.count("done") == 6, timeout=120, what="slow + renamed files",
                 on_timeout=watcher.log)
        time.sleep(3)  # give a wrong second registration the chance to show up
    finally:
        assert watcher.stop() == 0, watcher.log()
    log = watcher.log()
    states = db.sources()
    assert states["slow scanner ö.dcm"] == "done"  # never read before it was complete
    assert "renamed.dcm.part" not in states and "secret.dcm" not in states
    assert db.count() == 6 and db.predictions_per_image() == [1] * 6
    # Whichever of the two names is seen first is queued; the other is a duplicate.
    [skipped] = [line for line in log.splitlines() if "skipped duplicate" in line]
    assert "renamed.dcm: same image as image" in skipped
    assert "ignored link.dcm: symbolic link to a target outside the watched folder" in log
    assert log.count("queued slow scanner ö.dcm") == 1 and "rejected" not in log
    assert "PatientName" not in log and "SYNTHETIC-11" not in log  # no patient data


def test_exam_completes_and_a_late_image_supersedes_it_in_polling_mode(
        tmp_path: Path, tiny_model_dir: Path, db: Db) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stage = tmp_path / "stage"
    files = make_exam_set(stage, n_exams=1, seed=5)
    watcher = WatchProcess(_env(tmp_path, tiny_model_dir, exam_timeout_s="600"), tmp_path,
                           incoming, "--poll", "--after", "move")

    def exam_versions() -> list[tuple[int, str, bool]]:
        with db.engine.connect() as conn:
            rows = conn.execute(select(ExamResult.version, ExamResult.status,
                                       ExamResult.superseded_at)
                                .order_by(ExamResult.version)).all()
        return [(r.version, r.status, r.superseded_at is not None) for r in rows]

    try:
        watcher.wait_for_log("(polling, after processing: move")
        for path in files[:3]:
            shutil.copy(path, incoming / path.name)
        wait_for(lambda: db.count("done") == 3, timeout=150, what="3 views",
                 on_timeout=watcher.log)
        assert db.scalar(select(func.count()).select_from(ExamResult)) == 0  # waits for view 4
        shutil.copy(files[3], incoming / files[3].name)
        # The worker (after its chunk) or the watcher (on its follow-up) scores the exam,
        # whichever comes first; the database holds the outcome.
        wait_for(lambda: exam_versions() == [(1, "complete", False)], timeout=120,
                 what="version 1, complete", on_timeout=watcher.log)
        # A late fifth image of the same study (a repeated L-CC with a new SOP Instance UID).
        from pydicom import dcmread
        from pydicom.uid import generate_uid

        late = dcmread(files[0])
        late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[str(late.SOPInstanceUID), "late"])
        late.save_as(stage / "late.dcm", enforce_file_format=True)
        shutil.copy(stage / "late.dcm", incoming / "late.dcm")
        wait_for(lambda: exam_versions() == [(1, "complete", True), (2, "complete", False)],
                 timeout=120, what="version 2, complete, superseding version 1",
                 on_timeout=watcher.log)
        wait_for((incoming / "processed" / "late.dcm").exists, timeout=60,
                 what="the late image moved to processed/", on_timeout=watcher.log)
    finally:
        assert watcher.stop() == 0, watcher.log()
    with db.engine.connect() as conn:
        rows = conn.execute(select(ExamResult.version, ExamResult.superseded_at,
                                   ExamResult.n_images, ExamResult.status)
                            .order_by(ExamResult.version)).all()
    assert [(r.version, r.superseded_at is not None, r.n_images) for r in rows] == [
        (1, True, 4), (2, False, 5)]
    assert sorted(os.listdir(incoming / "processed")) == sorted(
        [p.name for p in files] + ["late.dcm"])


def test_kill_and_restart_mid_burst_processes_every_file_exactly_once(
        tmp_path: Path, tiny_model_dir: Path, redis_url: str, db: Db) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    env = _env(tmp_path, tiny_model_dir, broker_url=redis_url, chunk_size="32",
               watch_quiet_period_s="0.5")
    # Migrate first: two processes creating a fresh SQLite schema at once would race.
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    watcher = WatchProcess(env, tmp_path, incoming)
    total = 400
    try:
        watcher.wait_for_log("(inotify, after processing: leave")
        for n in range(total):
            if n == 150:
                wait_for(lambda: db.count() >= 60, timeout=60, what="part of the burst queued",
                         on_timeout=watcher.log)
                watcher.kill()  # mid-burst: some rows committed, some files unseen
                at_kill = db.count()
            (incoming / f"img{n:04d}.dcm").write_bytes(_one_dicom(incoming / "x", 1000 + n))
        watcher = WatchProcess(env, tmp_path, incoming)
        wait_for(lambda: db.count("done") == total, timeout=240, what="all files done",
                 on_timeout=lambda: _stalled(db, watcher, worker))
    finally:
        status = watcher.stop()
        worker.stop()
    assert status == 0, watcher.log()
    assert 0 < at_kill < total
    assert db.count() == total
    assert db.predictions_per_image() == [1] * total


def test_a_burst_of_2000_files_is_processed_exactly_once(
        tmp_path: Path, tiny_model_dir: Path, redis_url: str, db: Db) -> None:
    incoming, stage = tmp_path / "incoming", tmp_path / "stage"
    incoming.mkdir()
    stage.mkdir()
    total = 2000
    for n in range(total):
        (stage / f"b{n:05d}.dcm").write_bytes(_one_dicom(stage / "x", 5000 + n))
    env = _env(tmp_path, tiny_model_dir, broker_url=redis_url, chunk_size="64")
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    watcher = WatchProcess(env, tmp_path, incoming)
    try:
        watcher.wait_for_log("(inotify, after processing: leave")
        for path in sorted(stage.iterdir()):
            os.rename(path, incoming / path.name)  # all at once, complete (rename events)
        wait_for(lambda: db.count("done") == total, timeout=240, what="all 2,000 done",
                 on_timeout=lambda: _stalled(db, watcher, worker))
    finally:
        status = watcher.stop()
        worker.stop()
    assert status == 0, watcher.log()
    assert db.count() == total and db.predictions_per_image() == [1] * total
    assert watcher.log().count(" queued b") == total


def test_the_folder_disappearing_and_coming_back_is_survived(
        tmp_path: Path, redis_url: str, db: Db) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    env = _env(tmp_path, None, broker_url=redis_url)  # queue only: no worker, no model
    watcher = WatchProcess(env, tmp_path, incoming)
    try:
        watcher.wait_for_log("watching ")
        incoming.rename(tmp_path / "unmounted")
        watcher.wait_for_log("is gone (unmounted or deleted?)", timeout=30)
        time.sleep(2)
        assert watcher.proc.poll() is None and watcher.log().count("is gone") == 1  # no spin
        (tmp_path / "unmounted" / "while away.dcm").write_bytes(_one_dicom(tmp_path / "x", 7))
        (tmp_path / "unmounted").rename(incoming)  # remounted, with a file that raised no event
        watcher.wait_for_log("is back; rescanning it", timeout=30)
        (incoming / "after.dcm").write_bytes(_one_dicom(incoming / "x", 8))
        wait_for(lambda: db.count("queued") == 2, timeout=30, what="both files queued",
                 on_timeout=watcher.log)
    finally:
        assert watcher.stop() == 0, watcher.log()
