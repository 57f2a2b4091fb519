"""When a file failed for its state is filed, and when it is registered again: judged by
the file as the watcher saw it, never by its mtime against the database's clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from producer.watch.pending import Pending, PendingFiles
from producer.watch.scanner import KnownImage


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _failed(path: Path, at: datetime, code: str = "truncated") -> KnownImage:
    return KnownImage(1, "failed", None, None, code, "cut short", source=str(path),
                      finished_at=at)


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_changed(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 100)
    files = PendingFiles(settle_s=10, clock=_Clock())
    files.follow(path)
    st = path.stat()
    other = tmp_path / "b.tmp"  # the complete upload renamed over the half one
    other.write_bytes(b"y" * 100)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.rename(path)
    assert files.pending(path, _failed(path, datetime.now(UTC))) is Pending.CHANGED


def test_the_wait_runs_from_when_the_watcher_saw_each_failure(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 100)
    clock = _Clock()
    files = PendingFiles(settle_s=10, clock=clock)
    files.follow(path)
    clock.now = 100.0  # the worker took its time: the wait starts at the failure
    first = _failed(path, datetime(2030, 1, 1, tzinfo=UTC))
    assert files.pending(path, first) is Pending.WAIT
    clock.now = 110.0
    assert files.pending(path, first) is None
    again = _failed(path, datetime(2030, 1, 2, tzinfo=UTC))  # retried and failed anew
    assert files.pending(path, again) is Pending.WAIT
    assert files.pending(path, _failed(path, datetime(2030, 1, 2, tzinfo=UTC), "poison")) is None
    assert len(files) == 0  # a failure of its content: filed at once, nothing kept
