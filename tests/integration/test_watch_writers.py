"""`mammo watch` as a real process against writers that fooled it: copy tools that set the
final size first, a second handle's close, a folder named through a symbolic link, a study
moved in whole, a file deleted before it was queued."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from shared.db.schema import Image, Prediction
from shared.enums import Laterality, View
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.processes import WatchProcess, mammo_env, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")]
KEY = "integration-test-key-0123456789abcdef"  # synthetic files carry a PatientID
QUIET_S = 1.0


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def rows(self) -> dict[str, tuple[str, str, str]]:
        """File name -> (state, identity, source)."""
        try:
            with self.engine.connect() as conn:
                found = conn.execute(select(Image.source, Image.state, Image.identity))
                return {Path(s).name: (state, identity, s) for s, state, identity in found}
        except OperationalError:  # the watcher has not created the schema yet
            return {}

    def predictions_per_image(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(func.count()).select_from(Prediction)
                                     .group_by(Prediction.image_id)).scalars())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    database = Db(f"sqlite:///{tmp_path / 'watch.db'}")
    yield database
    database.engine.dispose()


def _env(tmp_path: Path, model: Path | None, **extra: str) -> dict[str, str]:
    # Grace and reconcile intervals far beyond each test's waits: only events and the quiet
    # period can queue a file in time.
    settings = {"database_url": f"sqlite:///{tmp_path / 'watch.db'}",
                "model": str(model) if model else None, "watch_quiet_period_s": str(QUIET_S),
                "watch_poll_interval_s": "0.5", "watch_reconcile_interval_s": "300",
                "watch_incomplete_grace_s": "300", "log_level": "INFO",
                "patient_id_key": KEY, **extra}
    return mammo_env(**settings)


def _dicom(scratch: Path, n: int, size: tuple[int, int] = (512, 416)) -> tuple[bytes, str]:
    """A DICOM's bytes and its SOP Instance UID."""
    uid = f"1.2.826.0.1.78.{n}.1"
    pixels = synth_mammogram(np.random.default_rng(n), size=size)
    write_dicom(scratch, pixels, study_uid=f"1.2.826.0.1.78.{n}", sop_uid=uid,
                laterality=Laterality.LEFT, view=View.CC)
    data = scratch.read_bytes()
    scratch.unlink()
    return data, uid


def _start(tmp_path: Path, folder: Path, env: dict[str, str]) -> WatchProcess:
    watcher = WatchProcess(env, tmp_path, folder)
    watcher.wait_for_log("watching ")
    time.sleep(1.5)  # past the start-up scan: what comes next is found by events alone
    return watcher


def test_a_preallocated_copy_is_queued_only_once_its_last_chunk_is_written(
        tmp_path: Path, tiny_model_dir: Path, db: Db) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    watcher = _start(tmp_path, incoming, _env(tmp_path, tiny_model_dir))
    try:
        # A chunked uploader: the final size set first (the tail a hole, the file parsing
        # as complete), then a chunk per open, each closed, with pauses longer than the
        # quiet period. It was queued 0.2 s after the first close and scored three quarters
        # zeros.
        chunked, chunked_uid = _dicom(tmp_path / "a.dcm", 1)
        quarter = len(chunked) // 4
        with (incoming / "chunked.dcm").open("wb") as handle:
            handle.truncate(len(chunked))
            handle.write(chunked[:quarter])
        for start in (quarter, 2 * quarter, 3 * quarter):
            time.sleep(3 * QUIET_S)
            assert db.rows() == {}, watcher.log()
            with (incoming / "chunked.dcm").open("r+b") as handle:
                handle.seek(start)
                handle.write(chunked[start:start + quarter if start < 3 * quarter else None])
        # A copy tool that holds its file open while another process opens it for writing
        # and closes it (a Samba attribute handle, an antivirus): a close-write event.
        held, held_uid = _dicom(tmp_path / "b.dcm", 2)
        half = len(held) // 2
        with (incoming / "held.dcm").open("wb") as writer:
            writer.truncate(len(held))
            writer.write(held[:half])
            writer.flush()
            time.sleep(0.5)
            os.close(os.open(incoming / "held.dcm", os.O_RDWR))
            time.sleep(3 * QUIET_S)
            assert "held.dcm" not in db.rows(), watcher.log()
            writer.write(held[half:])
        wait_for(lambda: [s for s, _i, _p in db.rows().values()] == ["done", "done"],
                 timeout=180, what="both copies scored", on_timeout=watcher.log)
    finally:
        assert watcher.stop() == 0, watcher.log()
    rows = db.rows()
    assert rows["chunked.dcm"][:2] == ("done", f"sop:{chunked_uid}")
    assert rows["held.dcm"][:2] == ("done", f"sop:{held_uid}")
    assert (incoming / "chunked.dcm").read_bytes() == chunked  # what was scored: the whole
    assert db.predictions_per_image() == [1, 1]
    log = watcher.log()
    assert log.count("queued chunked.dcm") == 1 and log.count("queued held.dcm") == 1, log
    assert "again" not in log and "rejected" not in log, log


def test_a_folder_named_through_a_symlink_is_watched(
        tmp_path: Path, redis_url: str, db: Db) -> None:
    # /data/incoming -> /mnt/share/incoming: watchdog watched the link itself, no event came,
    # and a dropped file waited for the next full scan.
    (tmp_path / "share").mkdir()
    incoming = tmp_path / "incoming"
    incoming.symlink_to(tmp_path / "share")
    watcher = _start(tmp_path, incoming, _env(tmp_path, None, broker_url=redis_url))
    try:
        data, _uid = _dicom(tmp_path / "s.dcm", 3, size=(128, 104))
        (incoming / "sub").mkdir()
        (incoming / "sub" / "s1.dcm").write_bytes(data)
        wait_for(lambda: "s1.dcm" in db.rows(), timeout=15, what="s1.dcm queued",
                 on_timeout=watcher.log)
    finally:
        assert watcher.stop() == 0, watcher.log()
    state, _identity, source = db.rows()["s1.dcm"]
    # Under the name given, as a full scan of the folder names it too.
    assert state == "queued" and source == str(incoming / "sub" / "s1.dcm")


def test_a_study_moved_in_waits_only_the_quiet_period_and_a_deletion_is_logged(
        tmp_path: Path, redis_url: str, db: Db) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    staging = tmp_path / "staging" / "study"
    staging.mkdir(parents=True)
    for n in range(4):
        data, _uid = _dicom(tmp_path / "x.dcm", 10 + n, size=(128, 104))
        (staging / f"v{n}.dcm").write_bytes(data)
    watcher = _start(tmp_path, incoming, _env(tmp_path, None, broker_url=redis_url))
    try:
        # A router's delivery: the study written elsewhere, then moved in whole. Its files
        # raise no close here, and waited the whole grace period for one.
        staging.rename(incoming / "study")
        # And a file written into a folder made a moment before.
        (incoming / "new").mkdir()
        data, _uid = _dicom(tmp_path / "y.dcm", 20, size=(128, 104))
        (incoming / "new" / "n.dcm").write_bytes(data)
        expected = {"v0.dcm", "v1.dcm", "v2.dcm", "v3.dcm", "n.dcm"}
        wait_for(lambda: set(db.rows()) == expected, timeout=15,
                 what="the moved study and the new folder's file queued",
                 on_timeout=watcher.log)
        # A half-written file is followed, not queued; deleted, it is logged as README says.
        (incoming / "half.dcm").write_bytes(data[: len(data) // 2])
        time.sleep(3 * QUIET_S)
        (incoming / "half.dcm").unlink()
        watcher.wait_for_log("vanished half.dcm: deleted before it was queued", timeout=10)
    finally:
        assert watcher.stop() == 0, watcher.log()
    assert {state for state, _i, _s in db.rows().values()} == {"queued"}
