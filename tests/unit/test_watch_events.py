"""Real inotify events become the right inbox entries (no mocks: a live observer)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.watch.events import Change, InboxHandler, Seen
from producer.watch.observer import make_observer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[InboxHandler]:
    (tmp_path / "in").mkdir()
    handler = InboxHandler()
    observer = make_observer(poll=False, interval_s=0.1)
    observer.schedule(handler, str(tmp_path / "in"), recursive=True)
    observer.start()
    yield handler
    observer.stop()
    observer.join(timeout=10)


def _collect(inbox: InboxHandler, until: Seen, timeout: float = 10.0) -> list[Seen]:
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        seen += inbox.drain()
        time.sleep(0.05)
    assert until in seen, seen
    return seen


def test_a_write_is_writing_until_closed(inbox: InboxHandler, tmp_path: Path) -> None:
    path = tmp_path / "in" / "a.dcm"
    with path.open("wb") as handle:
        handle.write(b"x" * 10)
        handle.flush()
        first = _collect(inbox, Seen(path, Change.WRITING))
    assert Seen(path, Change.FINISHED) not in first  # still open
    _collect(inbox, Seen(path, Change.FINISHED))


def test_renames_from_outside_and_inside_are_finished(inbox: InboxHandler,
                                                      tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x")
    os.rename(outside, tmp_path / "in" / "moved in.dcm")
    _collect(inbox, Seen(tmp_path / "in" / "moved in.dcm", Change.FINISHED))
    part = tmp_path / "in" / "b.dcm.part"
    part.write_bytes(b"x")
    os.rename(part, tmp_path / "in" / "b.dcm")
    seen = _collect(inbox, Seen(tmp_path / "in" / "b.dcm", Change.FINISHED))
    assert Seen(part, Change.DELETED) in seen


def test_a_folder_moved_in_is_announced_for_a_scan(inbox: InboxHandler,
                                                   tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "c.dcm").write_bytes(b"x")
    os.rename(batch, tmp_path / "in" / "batch")
    _collect(inbox, Seen(tmp_path / "in" / "batch", Change.NEW_FOLDER))


def test_a_folder_unmounted_while_its_observer_starts_is_reported_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from producer.watch import observer as module
    from producer.watch.observer import FolderState, FolderWatch

    root = tmp_path / "in"
    root.mkdir()
    real = module.make_observer

    def unmount_first(*, poll: bool, interval_s: float) -> object:
        root.rmdir()  # between check()'s stat and the observer's start
        return real(poll=poll, interval_s=interval_s)

    monkeypatch.setattr(module, "make_observer", unmount_first)
    watch = FolderWatch(root, InboxHandler(), logging.getLogger("test.watch"), poll=False,
                        interval_s=0.1)
    with caplog.at_level(logging.WARNING):
        assert watch.check() is FolderState.MISSING  # not a crash, not a polling fallback
    assert "is gone" in caplog.text and "falling back to polling" not in caplog.text
    assert watch.poll is False
    monkeypatch.setattr(module, "make_observer", real)
    root.mkdir()
    try:
        assert watch.check() is FolderState.RESTARTED and "is back" in caplog.text
    finally:
        watch.stop()
