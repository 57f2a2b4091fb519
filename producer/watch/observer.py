"""Keep a watchdog observer on the folder, across the folder disappearing and coming back.

A share that is unmounted and remounted leaves inotify watching a dead inode (or nothing);
the observer thread may even stop. Each tick the loop asks ``check``: it notices a missing
folder (says so once, then waits for it), a folder that came back or changed identity, and
an observer that died, and answers ``RESTARTED`` so the loop rescans for what it missed.

A folder given through a symbolic link (``/data/incoming -> /mnt/share/incoming``) is
watched at its real path: watchdog never follows the link it is given (inotify watched the
link itself, and no file dropped there raised an event until the next full scan). Its
events are handed on under the path given, as the scans name the same files.

Only the folders a scan enters are watched or polled (``WatchFolder.ignored``): never the
output folders ``processed/`` and ``failed/``, the report folder, hidden or linked folders.
watchdog's recursive watch took them all: with one folder per exam, ``--after move``
recreated each exam's folder under ``processed/``, two to three inotify watches per exam
never given back, and a poll listed every file ever archived. Running out of inotify watches
falls back to polling, at start or when a new folder cannot be watched, said once with the
limit to raise.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from producer.watch.folder import WatchFolder
from producer.watch.inotify_tree import (
    FOLDER,
    LIMITS,
    LINKED_FOLDER,
    Enters,
    TreeEmitter,
    every_folder,
    folder_kind,
    nothing,
)


class FolderState(Enum):
    OK = "ok"
    MISSING = "missing"
    RESTARTED = "restarted"


def make_observer(*, poll: bool, interval_s: float, enters: Enters = every_folder,
                  out_of_watches: Callable[[OSError], None] = nothing,
                  events_lost: Callable[[], None] = nothing) -> BaseObserver:
    """An observer of the folders that ``enters`` admits (by real path) below the one
    scheduled; with inotify, ``out_of_watches`` hears of a new folder left unwatched for
    want of watches, ``events_lost`` of a kernel queue overflow."""
    if poll:
        return PollingObserverVFS(os.stat, _listing(enters), polling_interval=interval_s)
    # A move's two ends come apart: a file renamed in from outside the folder (the usual
    # "write elsewhere, then mv" of PACS routers) arrives as a move, not as a bare create.
    return BaseObserver(TreeEmitter, timeout=interval_s, enters=enters,
                        out_of_watches=out_of_watches, events_lost=events_lost)


def _listing(enters: Enters) -> Callable[[str | None], Iterator[os.DirEntry[str]]]:
    """``os.scandir`` for the polling snapshots, without the folders the scans never enter:
    a poll listed every file ever moved to ``processed/`` (35 us each, 10 s a poll at
    300,000 files against a 1 s interval)."""
    def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as entries:
            for entry in entries:
                kind = folder_kind(entry)
                if kind != LINKED_FOLDER and (kind != FOLDER or enters(entry.path)):
                    yield entry
    return listdir


class UnderGivenPath(FileSystemEventHandler):
    """Hands ``handler`` the events of the folder watched at ``real``, with their paths
    under ``given`` instead (the path the folder was named by)."""

    def __init__(self, handler: FileSystemEventHandler, real: str, given: str) -> None:
        self.handler = handler
        self.real = real
        self.given = given

    def dispatch(self, event: FileSystemEvent) -> None:
        self.handler.dispatch(dataclasses.replace(
            event, src_path=self._given(event.src_path), dest_path=self._given(event.dest_path)))

    def _given(self, raw: str | bytes) -> str | bytes:
        path = os.fsdecode(raw)
        if path == self.real:
            return self.given
        if path.startswith(self.real.rstrip(os.sep) + os.sep):
            return os.path.join(self.given, path[len(self.real.rstrip(os.sep)) + 1:])
        return raw  # "" (no source or destination), or outside the folder


class FolderWatch:
    """``folder``: what the scans enter, and so what is watched (default: the root's
    output folders and hidden folders left out)."""

    def __init__(self, root: Path, handler: FileSystemEventHandler, log: logging.Logger, *,
                 poll: bool, interval_s: float, folder: WatchFolder | None = None) -> None:
        self.root = root
        self.handler = handler
        self.log = log
        self.poll = poll
        self.interval_s = interval_s
        self.folder = folder if folder is not None else WatchFolder.of(root, ())
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._missing_since_reported = False
        # Set from inotify's thread: a new folder went unwatched for want of watches, or the
        # kernel's queue overflowed (events lost: rescan).
        self._out_of_watches: OSError | None = None
        self._lost = threading.Event()

    def check(self) -> FolderState:
        identity = self._folder_identity()
        if identity is None:
            return self._gone()
        observer = self._observer
        if (observer is not None and _running(observer) and identity == self._identity
                and self._out_of_watches is None):
            if self._lost.is_set():
                self._lost.clear()
                self.log.warning("inotify dropped events on %s (its queue overflowed); "
                                 "rescanning", self.root)
                return FolderState.RESTARTED
            return FolderState.OK
        if self._missing_since_reported:
            self.log.warning("watched folder %s is back; rescanning it", self.root)
            self._missing_since_reported = False
        elif self._out_of_watches is not None:
            self.log.warning("inotify ran out while watching a new folder of %s (%s); falling "
                             "back to polling, and rescanning. %s", self.root,
                             self._out_of_watches.strerror, _advice(self._out_of_watches))
            self.poll = True
        elif observer is not None:
            self.log.warning("watcher on %s stopped or the folder was replaced; restarting "
                             "it and rescanning", self.root)
        self.stop()
        try:
            self._start()
        except OSError:
            if self._folder_identity() is not None:
                raise
            return self._gone()  # unmounted between the stat above and the start
        self._identity = identity
        return FolderState.RESTARTED

    def _folder_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if os.path.isdir(self.root) else None

    def _gone(self) -> FolderState:
        if not self._missing_since_reported:
            self.log.warning("watched folder %s is gone (unmounted or deleted?); waiting "
                             "for it to come back", self.root)
            self._missing_since_reported = True
        self.stop()
        return FolderState.MISSING

    def _start(self) -> None:
        # The link is resolved at each start: a link pointed elsewhere changes the folder's
        # identity, and check() restarts the watch on its new target.
        real = os.path.realpath(self.root)
        handler = (self.handler if real == str(self.root)
                   else UnderGivenPath(self.handler, real, str(self.root)))
        self._out_of_watches = None
        self._lost.clear()
        try:
            self._observer = self._observe(real, handler)
        except OSError as exc:
            if self.poll or exc.errno not in LIMITS or self._folder_identity() is None:
                raise  # a vanished folder is not an inotify limit: check() reports it
            self.log.warning("inotify cannot watch %s (%s); falling back to polling. %s",
                             self.root, exc.strerror, _advice(exc))
            self.poll = True
            self._observer = self._observe(real, handler)

    def _observe(self, real: str, handler: FileSystemEventHandler) -> BaseObserver:
        observer = make_observer(poll=self.poll, interval_s=self.interval_s,
                                 enters=self._enters(real), out_of_watches=self._ran_out,
                                 events_lost=self._lost.set)
        observer.schedule(handler, real, recursive=True)
        observer.start()
        return observer

    def _enters(self, real: str) -> Enters:
        """Whether a scan enters the folder at ``path`` below ``real``, the root's real path
        (the watch is on it; the scans name the folder as given)."""
        def enters(path: str) -> bool:
            return not self.folder.ignored(self.folder.root / os.path.relpath(path, real))
        return enters

    def _ran_out(self, exc: OSError) -> None:
        if self._out_of_watches is None:
            self._out_of_watches = exc

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=10)


def _running(observer: BaseObserver) -> bool:
    """The observer and its emitter (inotify's reader, the poller) are alive."""
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)


def _advice(exc: OSError) -> str:
    """What to raise, with its value now: one watch per folder, one instance per watcher."""
    setting = ("max_user_instances" if exc.errno == errno.EMFILE else "max_user_watches")
    try:
        now = f" (now {Path('/proc/sys/fs/inotify', setting).read_text().strip()}"
    except OSError:
        now = " ("
    each = ("one per process watching" if exc.errno == errno.EMFILE
            else "one per watched folder, shared by all processes of the user")
    return (f"Raise fs.inotify.{setting}{now}; {each}), e.g. `sysctl -w "
            f"fs.inotify.{setting}=524288` and a line in /etc/sysctl.d/, then restart the "
            "watcher; or use --poll.")
