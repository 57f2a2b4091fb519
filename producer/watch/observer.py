"""Keep a watchdog observer on the folder, across the folder disappearing and coming back.

A share that is unmounted and remounted leaves inotify watching a dead inode (or nothing);
the observer thread may even stop. Each tick the loop asks ``check``: it notices a missing
folder (says so once, then waits for it), a folder that came back or changed identity, and
an observer that died, and answers ``RESTARTED`` so the loop rescans for what it missed.

A folder given through a symbolic link (``/data/incoming -> /mnt/share/incoming``) is
watched at its real path: watchdog never follows the link it is given (inotify watched the
link itself, and no file dropped there raised an event until the next full scan). Its
events are handed on under the path given, as the scans name the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from enum import Enum
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver


class FolderState(Enum):
    OK = "ok"
    MISSING = "missing"
    RESTARTED = "restarted"


def make_observer(*, poll: bool, interval_s: float) -> BaseObserver:
    if poll:
        return PollingObserver(timeout=interval_s)
    from watchdog.observers.inotify import InotifyObserver

    # Full events: a file renamed in from outside the folder (the usual "write elsewhere,
    # then mv" of PACS routers) arrives as a move, not as a bare create.
    return InotifyObserver(timeout=interval_s, generate_full_events=True)


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
    def __init__(self, root: Path, handler: FileSystemEventHandler, log: logging.Logger, *,
                 poll: bool, interval_s: float) -> None:
        self.root = root
        self.handler = handler
        self.log = log
        self.poll = poll
        self.interval_s = interval_s
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._missing_since_reported = False

    def check(self) -> FolderState:
        identity = self._folder_identity()
        if identity is None:
            return self._gone()
        observer = self._observer
        if observer is not None and observer.is_alive() and identity == self._identity:
            return FolderState.OK
        if self._missing_since_reported:
            self.log.warning("watched folder %s is back; rescanning it", self.root)
            self._missing_since_reported = False
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
        observer = make_observer(poll=self.poll, interval_s=self.interval_s)
        observer.schedule(handler, real, recursive=True)
        try:
            observer.start()
        except OSError as exc:
            if self.poll or self._folder_identity() is None:
                raise  # a vanished folder is not an inotify limit: check() reports it
            # ENOSPC: fs.inotify.max_user_watches is exhausted (one watch per folder).
            self.log.warning("inotify cannot watch %s (%s); falling back to polling. Raise "
                             "fs.inotify.max_user_watches, or use --poll.", self.root, exc)
            self.poll = True
            observer = make_observer(poll=True, interval_s=self.interval_s)
            observer.schedule(handler, real, recursive=True)
            observer.start()
        self._observer = observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=10)
