"""Real inotify events become the right inbox entries (no mocks: a live observer)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent

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


def test_the_files_of_a_folder_moved_in_are_seen_not_being_written(
        inbox: InboxHandler, tmp_path: Path) -> None:
    # A router writes a study in a staging folder, then moves it in: watchdog reports its
    # files as (synthetic) creates, and no close will ever follow. Taken as "writing", they
    # waited the whole grace period.
    study = tmp_path / "staging" / "study"
    study.mkdir(parents=True)
    for name in ("v1.dcm", "v2.dcm"):
        (study / name).write_bytes(b"x" * 200)
    time.sleep(0.3)
    os.rename(study, tmp_path / "in" / "study")
    moved = tmp_path / "in" / "study"
    seen = _collect(inbox, Seen(moved / "v2.dcm", Change.SEEN))
    assert Seen(moved / "v1.dcm", Change.SEEN) in seen
    assert not [s for s in seen if s.change is Change.WRITING], seen


def test_a_create_says_only_that_the_file_is_there(tmp_path: Path) -> None:
    # watchdog reports the files already inside a folder it just began watching (created
    # a moment ago) as plain creates, synthetic or not: the quiet period decides; a writer's
    # own writes say "writing" (modified), its close "finished".
    inbox = InboxHandler()
    path = tmp_path / "new folder" / "a.dcm"
    inbox.dispatch(FileCreatedEvent(str(path)))
    inbox.dispatch(FileCreatedEvent(str(path), is_synthetic=True))
    inbox.dispatch(FileModifiedEvent(str(path)))
    inbox.dispatch(FileClosedEvent(str(path)))
    assert inbox.drain() == [Seen(path, Change.SEEN), Seen(path, Change.SEEN),
                             Seen(path, Change.WRITING), Seen(path, Change.FINISHED)]


@pytest.mark.parametrize("poll", [False, True])
def test_a_folder_named_through_a_symlink_raises_events_under_that_name(
        tmp_path: Path, poll: bool) -> None:
    import logging

    from producer.watch.observer import FolderState, FolderWatch

    (tmp_path / "real").mkdir()
    link = tmp_path / "incoming"
    link.symlink_to(tmp_path / "real")
    inbox = InboxHandler()
    watch = FolderWatch(link, inbox, logging.getLogger("test.watch"), poll=poll,
                        interval_s=0.1)
    try:
        assert watch.check() is FolderState.RESTARTED
        time.sleep(0.3)
        (link / "a.dcm").write_bytes(b"x" * 200)
        seen = _collect(inbox, Seen(link / "a.dcm", Change.SEEN))
        os.rename(link / "a.dcm", link / "b.dcm")
        seen += _collect(inbox, Seen(link / "b.dcm", Change.FINISHED))
        assert Seen(link / "a.dcm", Change.DELETED) in seen
        assert all(s.path.is_relative_to(link) for s in seen), seen  # never the real path
    finally:
        watch.stop()


def test_a_folder_unmounted_while_its_observer_starts_is_reported_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from producer.watch import observer as module
    from producer.watch.observer import FolderState, FolderWatch

    root = tmp_path / "in"
    root.mkdir()
    real = module.make_observer

    def unmount_first(**options: Any) -> object:
        root.rmdir()  # between check()'s stat and the observer's start
        return real(**options)

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
