"""Only complete files become ready: events, quiet period, a full parse, and the grace period."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from producer.watch.completeness import is_complete
from producer.watch.stability import StabilityTracker, has_hole
from shared.enums import Laterality, View
from shared.synthetic import synth_mammogram, write_dicom, write_png


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dicom(path: Path) -> bytes:
    pixels = synth_mammogram(np.random.default_rng(1), size=(96, 80))
    write_dicom(path, pixels, study_uid="1.2.3", sop_uid="1.2.3.4", laterality=Laterality.LEFT,
                view=View.CC)
    return path.read_bytes()


def _tracker(clock: Clock, *, quiet: float = 2.0, grace: float = 30.0) -> StabilityTracker:
    # A wall clock far in the past: files written now look brand new, never "already quiet".
    return StabilityTracker(quiet_s=quiet, grace_s=grace, clock=clock, wall_clock=lambda: 0.0)


def test_a_dicom_cut_short_is_incomplete_even_though_pydicom_reads_it(tmp_path: Path) -> None:
    data = _dicom(tmp_path / "full.dcm")
    assert is_complete(tmp_path / "full.dcm")
    for cut in (100, 400, len(data) - 1):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        assert not is_complete(tmp_path / "cut.dcm"), cut


def test_png_and_jpeg_need_their_end_markers(tmp_path: Path) -> None:
    png = write_png(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint16))
    assert is_complete(png)
    (tmp_path / "b.png").write_bytes(png.read_bytes()[:-5])
    assert not is_complete(tmp_path / "b.png")


def test_a_closed_event_on_a_half_written_file_is_not_enough(tmp_path: Path) -> None:
    data = _dicom(tmp_path / "src.dcm")
    path = tmp_path / "scan.dcm"
    path.write_bytes(data[: len(data) // 2])
    clock = Clock()
    tracker = _tracker(clock)
    tracker.note(path, closed=True)  # the scanner closed the file between two chunks
    assert tracker.poll().ready == []
    clock.now += 5
    assert tracker.poll().ready == []  # stable for the quiet period, still does not parse
    with path.open("ab") as handle:
        handle.write(data[len(data) // 2:])
    tracker.note(path, closed=True)
    assert tracker.poll().ready == [path] and len(tracker) == 0


@pytest.mark.parametrize("close_events", [True, False])
def test_a_preallocated_file_open_for_writing_waits_for_its_close(
        tmp_path: Path, close_events: bool) -> None:
    # Windows and SMB copy tools set the final size first, then fill it in: during a pause
    # the half-written file has its full size, stays quiet, and parses as complete.
    data = _dicom(tmp_path / "src.dcm")
    path = tmp_path / "copy.dcm"
    with path.open("wb") as handle:
        handle.truncate(len(data))
        handle.write(data[: len(data) // 2])
    assert is_complete(path)  # the tail is zeros, but every byte is there
    clock = Clock()
    tracker = StabilityTracker(quiet_s=2.0, grace_s=30.0, clock=clock, wall_clock=lambda: 0.0,
                               close_events=close_events)
    tracker.note(path, writing=True)  # create and modify events
    clock.now += 10
    # Polling sees no closes, and the quiet period has passed: the unwritten tail (a hole)
    # holds it back all the same.
    assert tracker.poll().ready == []
    with path.open("r+b") as handle:
        handle.seek(len(data) // 2)
        handle.write(data[len(data) // 2:])
    tracker.note(path, closed=close_events)  # polling sees the change, no close
    if not close_events:
        assert tracker.poll().ready == []  # just written: the quiet period starts again
        clock.now += 2.1
    assert tracker.poll().ready == [path]
    if not close_events:
        return
    # A writer that never closes it is not waited on past the grace period.
    tracker.note(path, writing=True)
    clock.now += 29
    assert tracker.poll().ready == []
    clock.now += 2
    assert tracker.poll().ready == [path]


def _preallocated(path: Path, data: bytes, written: int) -> None:
    """A copy tool's start: the final size set, ``written`` bytes filled in, then closed."""
    with path.open("wb") as handle:
        handle.truncate(len(data))
        handle.write(data[:written])


def test_a_close_on_a_preallocated_file_with_its_tail_unwritten_is_not_trusted(
        tmp_path: Path) -> None:
    # A chunked uploader closes after each chunk; a Samba handle or a touch-up script opens
    # the file for writing and closes it while the copy tool still holds it: close-write
    # events, on a file that parses as complete, its tail a hole.
    data = _dicom(tmp_path / "src.dcm")
    path = tmp_path / "copy.dcm"
    _preallocated(path, data, len(data) // 4)
    assert is_complete(path) and has_hole(path, len(data))
    clock = Clock()
    tracker = StabilityTracker(quiet_s=2.0, grace_s=30.0, clock=clock, wall_clock=lambda: 0.0,
                               close_events=True)
    tracker.note(path, closed=True)
    assert tracker.poll().ready == []
    clock.now += 10  # the uploader pauses: quiet for five quiet periods, closed, still a hole
    tracker.note(path, closed=True)  # another handle closed
    assert tracker.poll().ready == []
    with path.open("r+b") as handle:  # the rest, in the next chunk
        handle.seek(len(data) // 4)
        handle.write(data[len(data) // 4:])
    assert not has_hole(path, len(data))
    tracker.note(path, closed=True)
    assert tracker.poll().ready == [path] and len(tracker) == 0


def test_a_preallocated_file_abandoned_with_a_hole_waits_for_the_grace_period(
        tmp_path: Path) -> None:
    data = _dicom(tmp_path / "src.dcm")
    path = tmp_path / "copy.dcm"
    _preallocated(path, data, len(data) // 2)
    clock = Clock()
    tracker = _tracker(clock, quiet=2.0, grace=30.0)
    tracker.note(path, closed=True)
    for _ in range(14):
        clock.now += 2.0
        assert tracker.poll().ready == []
    clock.now += 2.5
    assert tracker.poll().ready == [path]  # queued anyway: the worker reads what is there


def test_a_file_system_without_hole_support_counts_as_no_hole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dicom(tmp_path / "src.dcm")
    path = tmp_path / "copy.dcm"
    _preallocated(path, data, len(data) // 2)

    def refuse(fd: int, pos: int, how: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "lseek", refuse)
    assert not has_hole(path, len(data))
    tracker = _tracker(Clock())
    tracker.note(path, closed=True)
    assert tracker.poll().ready == [path]  # as before: the close and the parse decide
    monkeypatch.delattr(os, "SEEK_HOLE")
    assert not has_hole(path, len(data))


def test_without_events_the_quiet_period_decides(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(_dicom(tmp_path / "src.dcm"))
    clock = Clock()
    tracker = _tracker(clock)
    tracker.note(path)
    assert tracker.poll().ready == []
    clock.now += 1.9
    assert tracker.poll().ready == []
    clock.now += 0.2
    assert tracker.poll().ready == [path]


def test_a_stable_broken_file_is_queued_after_the_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(_dicom(tmp_path / "src.dcm")[:300])
    clock = Clock()
    tracker = _tracker(clock, quiet=1.0, grace=10.0)
    tracker.note(path)
    for _ in range(9):
        clock.now += 1.0
        assert tracker.poll().ready == []
    clock.now += 1.5
    assert tracker.poll().ready == [path]  # the worker will record why it is unusable


def test_files_already_quiet_at_start_up_need_no_wait(tmp_path: Path) -> None:
    path = tmp_path / "old.dcm"
    path.write_bytes(_dicom(tmp_path / "src.dcm"))
    tracker = StabilityTracker(quiet_s=5.0, grace_s=30.0, clock=Clock())  # real wall clock
    os.utime(path, (1, 1))  # written long ago
    tracker.note(path)
    assert tracker.poll().ready == [path]


def test_a_file_deleted_before_it_was_queued_is_reported_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "gone.dcm"
    path.write_bytes(b"x")
    tracker = _tracker(Clock())
    tracker.note(path)
    path.unlink()
    verdicts = tracker.poll()
    assert verdicts.vanished == [path] and verdicts.ready == [] and len(tracker) == 0


def test_a_file_deleted_after_a_delete_event_is_reported_too(tmp_path: Path) -> None:
    # With inotify the delete event reaches the tracker first: it is still reported.
    path = tmp_path / "gone.dcm"
    path.write_bytes(b"x")
    clock = Clock()
    tracker = _tracker(clock)
    tracker.note(path)
    assert tracker.poll().ready == []
    path.unlink()
    tracker.forget(path)
    assert len(tracker) == 0
    verdicts = tracker.poll()
    assert verdicts.vanished == [path] and verdicts.ready == []
    assert tracker.poll().vanished == []  # once


def test_a_file_renamed_before_it_was_queued_is_not_reported_deleted(tmp_path: Path) -> None:
    old, new = tmp_path / "IMG001.dcm", tmp_path / "1.2.3.4.dcm"
    old.write_bytes(_dicom(tmp_path / "src.dcm"))
    clock = Clock()
    tracker = _tracker(clock)
    tracker.note(old, writing=True)
    assert tracker.poll().ready == []
    os.rename(old, new)
    tracker.forget(old)  # the move event: its source, then its destination
    tracker.note(new, closed=True)
    verdicts = tracker.poll()
    assert verdicts.vanished == [] and verdicts.ready == [new]
    # Deleted and written again under the same name before the poll: nothing vanished.
    old.write_bytes(b"x" * 10)
    tracker.note(old)
    assert tracker.poll().ready == []
    tracker.forget(old)
    old.unlink()
    old.write_bytes(b"y" * 10)
    tracker.note(old)
    assert tracker.poll().vanished == []


def test_a_60_mb_dicom_written_slowly_is_ready_only_at_its_last_byte(tmp_path: Path) -> None:
    pixels = np.zeros((5500, 5500), dtype=np.uint16)  # 60.5 MB of pixel data
    source = write_dicom(tmp_path / "big-src.dcm", pixels, study_uid="1.2.3",
                         sop_uid="1.2.3.60", laterality=Laterality.RIGHT, view=View.MLO)
    data = source.read_bytes()
    assert len(data) > 60_000_000
    path = tmp_path / "big.dcm"
    clock = Clock()
    tracker = _tracker(clock, quiet=2.0, grace=600.0)
    step = len(data) // 8 + 1
    for start in range(0, len(data), step):
        with path.open("ab") as handle:  # one chunk, then a pause longer than the quiet period
            handle.write(data[start:start + step])
        tracker.note(path, closed=True)
        done = start + step >= len(data)
        assert (tracker.poll().ready == [path]) == done, start
        clock.now += 3.0
        if not done:
            assert tracker.poll().ready == []


def _check_unreadable_file_is_denied(folder: Path) -> None:
    path = folder / "locked.dcm"
    clock = Clock()
    tracker = _tracker(clock, quiet=0.0)
    tracker.note(path)
    verdicts = tracker.poll()
    assert verdicts.denied == [path] and verdicts.ready == [] and len(tracker) == 0


def test_an_unreadable_file_is_reported_and_dropped_until_the_next_scan(tmp_path: Path) -> None:
    # Root reads any file, so as root the check runs in a child stripped of the two
    # capabilities that bypass file permissions (setpriv).
    folder = Path(tempfile.mkdtemp(prefix="mammo-perm-"))
    try:
        locked = folder / "locked.dcm"
        locked.write_bytes(_dicom(tmp_path / "src.dcm"))
        locked.chmod(0)
        if os.geteuid() != 0:
            _check_unreadable_file_is_denied(folder)
            return
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the power to read")
        code = ("import sys; from pathlib import Path; "
                "from tests.unit.test_watch_stability import _check_unreadable_file_is_denied;"
                " _check_unreadable_file_is_denied(Path(sys.argv[1]))")
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
             "-c", code, str(folder)],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
            timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_path_the_system_cannot_stat_is_reported_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "l1.dcm").symlink_to("l2.dcm")
    (tmp_path / "l2.dcm").symlink_to("l1.dcm")
    too_long = tmp_path / ("x" * 300 + ".dcm")
    tracker = _tracker(Clock(), quiet=0.0)
    for path in (tmp_path / "l1.dcm", too_long):
        tracker.note(path)
    verdicts = tracker.poll()
    assert verdicts.unreadable == {tmp_path / "l1.dcm": "Too many levels of symbolic links",
                                   too_long: "File name too long"}
    assert verdicts.ready == verdicts.vanished == verdicts.denied == [] and len(tracker) == 0


@pytest.mark.timeout(60)
def test_a_named_pipe_is_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.dcm")
    tracker = _tracker(Clock(), quiet=0.0)
    tracker.note(tmp_path / "p.dcm", closed=True)
    verdicts = tracker.poll()  # opening it would block until a writer came
    assert verdicts.not_files == {tmp_path / "p.dcm": "named pipe"}
    assert verdicts.ready == [] and len(tracker) == 0
