"""`mammo watch --after move` as a real process, with one folder per exam as PACS routers
write them: its inotify watches and the drop folder's folders stay bounded.

A 50-minute soak held 242 inotify watches after about 105 exams (2.3 per exam): each exam's
folder stayed, emptied by the move and watched, and its copies under processed/ (recreated
by the move) were watched too. At 2,500 exams a night that passed the kernel's default of
8,192 watches (before Linux 5.11) on the second night.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.enums import Laterality, View
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.inotify import inotify_watches
from tests.helpers.processes import WatchProcess, mammo_env, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")]
KEY = "integration-test-key-0123456789abcdef"  # synthetic files carry a PatientID
WAVES, EXAMS = 3, 4  # exams written at once, one folder (with a series folder) each


def _exam(staging: Path, wave: int, n: int) -> Path:
    """An exam as a router delivers it: written elsewhere, moved in whole."""
    exam = staging / f"EXAM-{wave}-{n}"
    for k, (side, view) in enumerate([(Laterality.LEFT, View.CC), (Laterality.RIGHT, View.CC)]):
        pixels = synth_mammogram(np.random.default_rng(100 * wave + 10 * n + k), size=(256, 208))
        path = exam / "S1" / f"{side.value}{view.value}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dicom(path, pixels, study_uid=f"1.2.826.0.1.79.{wave}.{n}",
                    sop_uid=f"1.2.826.0.1.79.{wave}.{n}.{k}", laterality=side, view=view)
    return exam


def _filed(incoming: Path) -> int:
    return sum(1 for top in ("processed", "failed") for _p in (incoming / top).rglob("*.dcm"))


def test_watches_and_exam_folders_stay_bounded_as_exams_come_and_go(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'watch.db'}",
                    model=str(tiny_model_dir), watch_quiet_period_s="0.5",
                    watch_poll_interval_s="0.5", watch_reconcile_interval_s="300",
                    watch_incomplete_grace_s="300", log_level="INFO", patient_id_key=KEY,
                    watch_remove_emptied="true")
    watcher = WatchProcess(env, tmp_path, incoming, "--after", "move")
    pid = watcher.proc.pid
    peak = 0

    def sample() -> int:
        nonlocal peak
        count = inotify_watches(pid)
        peak = max(peak, count)
        return count

    try:
        watcher.wait_for_log("watching ")
        start = sample()
        for wave in range(WAVES):
            staging = tmp_path / f"staging-{wave}"
            for n in range(EXAMS):
                _exam(staging, wave, n).rename(incoming / f"EXAM-{wave}-{n}")
            wait_for(lambda w=wave: sample() >= 0 and _filed(incoming) == (w + 1) * EXAMS * 2,
                     timeout=180, what=f"wave {wave} classified and filed",
                     on_timeout=watcher.log)
            # Emptied, each exam's folder is removed once it stayed so for the quiet period,
            # and its watches with it.
            wait_for(lambda: sample() >= 0 and sorted(os.listdir(incoming)) == ["processed"],
                     timeout=20, what="the emptied exam folders removed",
                     on_timeout=lambda: f"{sorted(os.listdir(incoming))}, "
                                        f"{inotify_watches(pid)} watches\n{watcher.log()}")
        time.sleep(1.0)
        end = sample()
    finally:
        assert watcher.stop() == 0, watcher.log()
    log = watcher.log()
    assert start == 1 and end == 1, (start, end, log)  # the root's, as before any exam
    # Each exam in flight: its folder and its series folder, never processed/ ones.
    assert peak <= 1 + 2 * EXAMS, peak
    assert log.count("removed empty folder EXAM-") == 2 * WAVES * EXAMS, log
    assert "removed empty folder EXAM-0-0/S1 (emptied by --after move)" in log
    assert "removed empty folder EXAM-0-0 (emptied by --after move)" in log
    assert sorted(p.name for p in (incoming / "processed").iterdir()) == sorted(
        f"EXAM-{w}-{n}" for w in range(WAVES) for n in range(EXAMS))
