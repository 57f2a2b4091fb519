"""The watcher watches its drop tree only, and gives back what the move action empties.

A soak with one folder per exam (as PACS routers write them) ended with 242 inotify watches
after about 105 exams: each exam's folder, plus its copies under ``processed/`` and
``failed/`` (watchdog's recursive watch took them too), and 397 of 400 exam folders left
empty, watched and rescanned for ever. Real inotify here (no mocks but the limit: the
shared ``fs.inotify.max_user_watches`` is never lowered), the watch counted as the kernel
lists it in ``/proc/self/fdinfo``.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from producer.watch.actions import EmptiedFolders
from producer.watch.events import Change, InboxHandler, Seen
from producer.watch.observer import FolderState, FolderWatch
from producer.watch.service import Watcher, WatchOptions
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.enums import Laterality, View
from shared.queue import create_celery_app
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.inotify import inotify_watches
from tests.helpers.processes import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
LOG = logging.getLogger("test.watch")


def _collect(inbox: InboxHandler, until: Callable[[list[Seen]], bool],
             timeout: float = 10.0) -> list[Seen]:
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while not until(seen) and time.monotonic() < deadline:
        seen += inbox.drain()
        time.sleep(0.05)
    assert until(seen), seen
    return seen


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for sub in ("exam1/series", "processed/exam0/series", "failed/exam0", ".staging/study"):
        (root / sub).mkdir(parents=True)
    (root / "processed/exam0/series/old.dcm").write_bytes(b"x")
    return root


@pytest.fixture
def inotify_watch(root: Path) -> Iterator[tuple[FolderWatch, InboxHandler]]:
    inbox = InboxHandler()
    watch = FolderWatch(root, inbox, LOG, poll=False, interval_s=0.1)
    try:
        yield watch, inbox
    finally:
        watch.stop()


def test_only_the_drop_tree_is_watched_and_its_folders_come_and_go(
        root: Path, inotify_watch: tuple[FolderWatch, InboxHandler]) -> None:
    watch, inbox = inotify_watch
    before = inotify_watches()
    assert watch.check() is FolderState.RESTARTED
    # The root, exam1 and exam1/series: never processed/, failed/ or a hidden folder (10).
    assert inotify_watches() - before == 3
    # A folder made after the start, and one inside it: their files raise events.
    (root / "exam2/series").mkdir(parents=True)
    time.sleep(0.2)
    (root / "exam2/series/a.dcm").write_bytes(b"x" * 100)
    _collect(inbox, lambda seen: Seen(root / "exam2/series/a.dcm", Change.FINISHED) in seen)
    assert inotify_watches() - before == 5
    # The move action files it, recreating its folder under processed/: no watch, no event.
    (root / "processed/exam2/series").mkdir(parents=True)
    os.replace(root / "exam2/series/a.dcm", root / "processed/exam2/series/a.dcm")
    (root / "failed/exam2").mkdir(parents=True)
    (root / "failed/exam2/b.dcm").write_bytes(b"x")
    # A study written in a hidden staging folder, then moved in whole: announced, watched.
    (root / ".staging/study/c.dcm").write_bytes(b"x" * 100)
    os.rename(root / ".staging/study", root / "exam3")
    seen = _collect(inbox, lambda seen: Seen(root / "exam3/c.dcm", Change.SEEN) in seen)
    assert Seen(root / "exam3", Change.NEW_FOLDER) in seen
    assert Seen(root / "exam2/series/a.dcm", Change.DELETED) in seen
    # Emptied folders removed: their watches go with them.
    (root / "exam2/series").rmdir()
    (root / "exam2").rmdir()
    wait_for(lambda: inotify_watches() - before == 4, timeout=5, what="exam2's watches gone",
             on_timeout=lambda: str(inotify_watches() - before))
    # A folder of the same name made again is watched anew.
    (root / "exam2").mkdir()
    time.sleep(0.2)
    (root / "exam2/d.dcm").write_bytes(b"x")
    seen += _collect(inbox, lambda seen: Seen(root / "exam2/d.dcm", Change.FINISHED) in seen)
    assert not [s for s in seen if s.path.parts[len(root.parts)] in ("processed", "failed")
                or s.path.name.startswith(".")], seen
    assert watch.check() is FolderState.OK
    watch.stop()
    assert inotify_watches() == before


def test_a_folder_renamed_or_moved_out_takes_its_watches_along(
        root: Path, tmp_path: Path, inotify_watch: tuple[FolderWatch, InboxHandler]) -> None:
    watch, inbox = inotify_watch
    before = inotify_watches()
    assert watch.check() is FolderState.RESTARTED
    assert inotify_watches() - before == 3
    os.rename(root / "exam1", root / "exam9")  # renamed: watched under its new name
    time.sleep(0.3)
    (root / "exam9/series/a.dcm").write_bytes(b"x")
    seen = _collect(inbox, lambda seen: Seen(root / "exam9/series/a.dcm", Change.FINISHED)
                    in seen)
    assert Seen(root / "exam1", Change.DELETED) in seen
    assert Seen(root / "exam9", Change.NEW_FOLDER) in seen
    assert inotify_watches() - before == 3
    os.rename(root / "exam9", tmp_path / "elsewhere")  # moved out: nothing watched there
    wait_for(lambda: inotify_watches() - before == 1, timeout=5, what="its watches gone")
    (tmp_path / "elsewhere/series/b.dcm").write_bytes(b"x")
    os.rename(root / "processed/exam0", root / "exam0")  # out of processed/: now watched
    seen = _collect(inbox, lambda seen: Seen(root / "exam0/series/old.dcm", Change.SEEN)
                    in seen)
    assert inotify_watches() - before == 3
    assert not [s for s in seen if "elsewhere" in str(s.path) or "b.dcm" in str(s.path)]


def test_polling_never_lists_the_output_folders(root: Path) -> None:
    inbox = InboxHandler()
    watch = FolderWatch(root, inbox, LOG, poll=True, interval_s=0.1)
    try:
        assert watch.check() is FolderState.RESTARTED
        time.sleep(0.3)
        (root / "processed/exam0/series/new.dcm").write_bytes(b"x")
        (root / "failed/exam0/new.dcm").write_bytes(b"x")
        (root / ".staging/study/new.dcm").write_bytes(b"x")
        time.sleep(0.3)
        (root / "exam1/series/a.dcm").write_bytes(b"x")
        seen = _collect(inbox, lambda seen: Seen(root / "exam1/series/a.dcm", Change.SEEN)
                        in seen)
        time.sleep(0.3)  # a few more polls
        seen += inbox.drain()
    finally:
        watch.stop()
    assert [s.path for s in seen] == [root / "exam1/series/a.dcm"], seen


def test_the_scans_do_not_list_the_output_folders_either(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every reconcile scan (60 s) listed each file ever filed there, to ignore it.
    from producer.watch import scanner
    from producer.watch.folder import WatchFolder

    listed: list[Path] = []
    real = os.scandir

    def scandir(path: Path) -> object:
        listed.append(Path(path))
        return real(path)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    (root / "exam1/series/a.dcm").write_bytes(b"x")
    assert list(scanner.walk(WatchFolder.of(root, ()))) == [root / "exam1/series/a.dcm"]
    assert sorted(listed) == [root, root / "exam1", root / "exam1/series"]


@pytest.fixture
def out_of_watches_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """inotify_add_watch fails ENOSPC for folders of this name, as when
    fs.inotify.max_user_watches is spent (the shared setting is never lowered)."""
    from watchdog.observers.inotify_c import InotifyFD

    real = InotifyFD.add_callback

    def limit(name: str) -> None:
        def add_callback(self: InotifyFD, path: bytes, *args: object, **kwargs: object) -> object:
            if os.path.basename(path) == os.fsencode(name):
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
            return real(self, path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(InotifyFD, "add_callback", add_callback)

    return limit


def test_out_of_watches_for_a_new_folder_falls_back_to_polling_said_once(
        root: Path, inotify_watch: tuple[FolderWatch, InboxHandler],
        out_of_watches_for: Callable[[str], None], caplog: pytest.LogCaptureFixture) -> None:
    # watchdog logged "Unable to watch" on its own logger and went on: the new folder's
    # files raised no event, only the next full scan (60 s) found them, and nothing said
    # which setting to raise.
    watch, inbox = inotify_watch
    out_of_watches_for("exam2")
    assert watch.check() is FolderState.RESTARTED
    assert not watch.poll
    (root / "exam2").mkdir()
    wait_for(lambda: watch.check() is FolderState.RESTARTED, timeout=5,
             what="the watch restarted, polling")
    assert watch.poll
    time.sleep(0.3)
    (root / "exam2/a.dcm").write_bytes(b"x")
    _collect(inbox, lambda seen: Seen(root / "exam2/a.dcm", Change.SEEN) in seen)
    assert watch.check() is FolderState.OK
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert [w for w in warnings if "inotify" in w] == [
        f"inotify ran out while watching a new folder of {root} (inotify watch limit "
        f"reached); falling back to polling, and rescanning. Raise "
        f"fs.inotify.max_user_watches (now {limit}; one per watched folder, shared by all "
        "processes of the user), e.g. `sysctl -w fs.inotify.max_user_watches=524288` and a "
        "line in /etc/sysctl.d/, then restart the watcher; or use --poll."]


def test_out_of_watches_at_start_falls_back_to_polling_with_the_limit_to_raise(
        root: Path, inotify_watch: tuple[FolderWatch, InboxHandler],
        out_of_watches_for: Callable[[str], None], caplog: pytest.LogCaptureFixture) -> None:
    watch, _inbox = inotify_watch
    out_of_watches_for("series")
    before = inotify_watches()
    with caplog.at_level(logging.WARNING):
        assert watch.check() is FolderState.RESTARTED
    assert watch.poll and inotify_watches() == before  # the watches made are given back
    assert f"inotify cannot watch {root} (inotify watch limit reached); falling back to " \
           "polling. Raise fs.inotify.max_user_watches (now " in caplog.text


def test_lost_events_rebuild_the_watches_and_rescan(
        root: Path, inotify_watch: tuple[FolderWatch, InboxHandler],
        caplog: pytest.LogCaptureFixture) -> None:
    watch, _inbox = inotify_watch
    assert watch.check() is FolderState.RESTARTED
    before = inotify_watches()
    (root / "exam2").mkdir()
    time.sleep(0.3)  # its create handled: the overflow below comes after it, as it would
    observer = watch._observer
    assert observer is not None
    (emitter,) = observer.emitters
    emitter.on_queue_overflow()  # type: ignore[attr-defined]
    emitter.on_events_lost()  # type: ignore[attr-defined]
    assert watch.check() is FolderState.RESTARTED  # the loop rescans for what it missed
    assert "inotify dropped events" in caplog.text
    assert watch.check() is FolderState.OK
    assert inotify_watches() == before + 1  # the tree's again, exam2's included
    assert len(emitter.watched()) == 4  # type: ignore[attr-defined]


# -- the in-process watcher: emptied folders ----------------------------------------------

@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dicom(path: Path, n: int) -> None:
    """Written an hour ago: past the watcher's quiet period for files as well."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(n), size=(96, 80))
    write_dicom(path, pixels, study_uid=f"1.2.9.{n}", sop_uid=f"1.2.9.{n}.1",
                laterality=Laterality.LEFT, view=View.CC)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))


def _emptied(watcher: Watcher) -> EmptiedFolders:
    emptied = watcher.followup.actions.emptied
    assert emptied is not None  # MAMMO_WATCH_REMOVE_EMPTIED asked for
    return emptied


@pytest.mark.parametrize("after", ["move", "delete", "leave"])
def test_folders_the_watcher_emptied_are_removed_once_they_stay_empty(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, after: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from pydantic import SecretStr

    root = tmp_path / "in"
    _dicom(root / "EXAM-1/a.dcm", 1)
    _dicom(root / "EXAM-2/b.dcm", 2)
    _dicom(root / "EXAM-3/S1/c.dcm", 3)
    (root / "fixed").mkdir()  # a sender's own folder, kept by a hidden file
    (root / "fixed/.keep").touch()
    _dicom(root / "fixed/d.dcm", 4)
    (root / "EMPTY").mkdir()  # nothing the watcher emptied: left alone
    s = settings.model_copy(update={
        "watch_quiet_period_s": 30.0, "watch_after": after, "watch_remove_emptied": True,
        "patient_id_key": SecretStr("unit-test-key-0123456789abcdef")})
    watcher = Watcher(s, sessions, create_celery_app(s.embedded()), WatchOptions(root))
    emptied = _emptied(watcher)
    clock = emptied.clock = _Clock()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.scan()
    watcher.queue_ready(threading.Event())
    with sessions() as session:
        lifecycle.mark_done(session, [1, 2, 3, 4])
        session.commit()
    watcher.followup.poll()  # filed (moved or deleted): the folders are empty now
    left = {"EXAM-1", "EXAM-2", "EXAM-3", "fixed", "EMPTY"}
    assert left <= set(os.listdir(root))
    watcher.followup.poll()  # seen empty: younger than the quiet period, so left
    _dicom(root / "EXAM-2/late.dcm", 5)  # a late view: its folder is not empty any more
    clock.now += 29
    watcher.followup.poll()
    assert left <= set(os.listdir(root))
    clock.now += 2
    watcher.followup.poll()  # EXAM-1 and EXAM-3/S1: empty and unchanged for 30 s
    if after == "leave":
        assert left <= set(os.listdir(root)) and (root / "EXAM-3/S1").is_dir()
        assert "removed" not in caplog.text
        return
    assert {"EXAM-2", "EXAM-3", "fixed", "EMPTY"} <= set(os.listdir(root))
    assert "EXAM-1" not in os.listdir(root) and os.listdir(root / "EXAM-3") == []
    (root / "EXAM-3/note.txt").write_text("x")  # came meanwhile: rmdir refuses, nothing lost
    clock.now += 31
    watcher.followup.poll()
    watcher.followup.poll()
    (root / "EXAM-3/note.txt").unlink()  # gone again, but nothing moved out: stays
    clock.now += 31
    watcher.followup.poll()
    watcher.followup.poll()
    assert (root / "EXAM-3").is_dir() and (root / "EXAM-2/late.dcm").is_file()
    assert root.is_dir() and (root / "fixed/.keep").is_file()
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert sorted(removed) == [f"removed empty folder EXAM-1 (emptied by --after {after})",
                       f"removed empty folder EXAM-3/S1 (emptied by --after {after})"]
    if after == "move":  # the output folders are the watcher's: never removed
        assert {"processed", "EXAM-2", "EXAM-3", "fixed", "EMPTY"} == set(os.listdir(root))
        assert sorted(p.relative_to(root / "processed").as_posix()
                      for p in (root / "processed").rglob("*.dcm")) == [
            "EXAM-1/a.dcm", "EXAM-2/b.dcm", "EXAM-3/S1/c.dcm", "fixed/d.dcm"]
    assert len(emptied) == 0


def test_emptied_folders_stay_unless_removal_is_asked_for(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    # A sender writing into a fixed folder it does not create (`cp x.dcm incoming/siteA/`)
    # would find it gone: removal is the site's choice (MAMMO_WATCH_REMOVE_EMPTIED).
    from pydantic import SecretStr

    root = tmp_path / "in"
    _dicom(root / "siteA/a.dcm", 1)
    s = settings.model_copy(update={
        "watch_quiet_period_s": 0.0, "watch_after": "move",
        "patient_id_key": SecretStr("unit-test-key-0123456789abcdef")})
    watcher = Watcher(s, sessions, create_celery_app(s.embedded()), WatchOptions(root))
    watcher.scan()
    watcher.queue_ready(threading.Event())
    with sessions() as session:
        lifecycle.mark_done(session, [1])
        session.commit()
    for _ in range(3):
        watcher.followup.poll()
    assert (root / "siteA").is_dir() and os.listdir(root / "siteA") == []
    assert (root / "processed/siteA/a.dcm").is_file()
    assert watcher.followup.actions.emptied is None
    # What was checked of the moved file's name is dropped: kept, it grew a watcher by
    # about 1 KB per file filed (the soak: 162.9 -> 174.0 MB over 3,630 images).
    assert len(watcher.registered) == 0
