"""inotify on the drop tree alone: a watch on each folder that the scans enter, none elsewhere.

watchdog's recursive inotify watch cannot leave a sub-folder out (gorakhargosh/watchdog#212):
it also watched ``processed/`` and ``failed/``, where ``--after move`` recreates each exam's
folder, so a router's one-folder-per-exam took two to three watches per exam, never given
back (``fs.inotify.max_user_watches``, 8,192 before Linux 5.11, ran out on the second
night).

``TreeEmitter`` watches the root and each folder below it that ``enters`` admits (the watcher
passes the folders its scans enter: never the output folders, the report folder or hidden
ones) with a watch of its own; a folder created or moved in is watched, then listed (nothing
written in between is missed), and its watches go with it when it is deleted or moved away.
It reads through watchdog's ``InotifyFD`` and hands the observer the events watchdog's own
emitter gives with full events: a move's two ends arrive apart (the watcher takes each on its
own), and the files already in a folder that arrives are announced as synthetic creates.

Running out of watches while running (a new folder) is handed to ``out_of_watches``, once per
folder that could not be watched; at start it raises ``OSError``, for the caller to fall back
to polling. A queue overflow re-watches the tree and calls ``events_lost``.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.observers.api import DEFAULT_EMITTER_TIMEOUT, EventEmitter, EventQueue, ObservedWatch
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

Enters = Callable[[str], bool]
LIMITS = (errno.ENOSPC, errno.EMFILE)  # out of watches, out of inotify instances
FOLDER, LINKED_FOLDER = "folder", "linked folder"

# What the watcher acts on (InboxHandler): no opens, reads or attribute changes, which only
# cost a wake-up each. Only folders are watched, and no link is followed.
_C = InotifyConstants
_MASK = Mask(_C.IN_CREATE | _C.IN_DELETE | _C.IN_MODIFY | _C.IN_CLOSE_WRITE | _C.IN_MOVED_FROM
             | _C.IN_MOVED_TO | _C.IN_ONLYDIR | _C.IN_DONT_FOLLOW | _C.IN_EXCL_UNLINK)
_FILE_EVENTS: tuple[tuple[int, Callable[[str], FileSystemEvent]], ...] = (
    (_C.IN_CREATE, FileCreatedEvent),
    (_C.IN_MODIFY, FileModifiedEvent),
    (_C.IN_CLOSE_WRITE, FileClosedEvent),
    (_C.IN_DELETE, FileDeletedEvent),
    (_C.IN_MOVED_FROM, lambda path: FileMovedEvent(path, "")),
    (_C.IN_MOVED_TO, lambda path: FileMovedEvent("", path)),
)


def every_folder(_path: str) -> bool:
    return True


def nothing(*_args: object) -> None:
    """The default of the callbacks: heard by no one."""


class TreeEmitter(EventEmitter):
    """Events of the folders under ``watch.path`` that ``enters`` admits (all of them by
    default), each folder with its own inotify watch."""

    def __init__(self, event_queue: EventQueue, watch: ObservedWatch, *,
                 timeout: float = DEFAULT_EMITTER_TIMEOUT,
                 event_filter: list[type[FileSystemEvent]] | None = None,
                 enters: Enters = every_folder,
                 out_of_watches: Callable[[OSError], None] = nothing,
                 events_lost: Callable[[], None] = nothing) -> None:
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        self._enters = enters
        self._out_of_watches = out_of_watches
        self._events_lost = events_lost
        self._callback_id = CallbackId(id(self))
        self._reader: InotifyFD | None = None
        # Changed by the reader's thread (events) and the caller's (start, stop).
        self._maps_lock = threading.Lock()
        self._watched = _Watched()

    @property
    def root(self) -> str:
        return os.fsdecode(self.watch.path)

    def watched(self) -> list[str]:
        """The folders watched now."""
        with self._maps_lock:
            return sorted(self._watched.by_path)

    # -- the thread -------------------------------------------------------------------------

    def on_thread_start(self) -> None:
        """Watches the tree before the thread starts: an error (a missing folder, no watch
        left) reaches ``observer.start()``."""
        self._reader = InotifyFD()
        self._reader.start()
        try:
            self._add_watch(self.root, strict=True)
            if self.watch.is_recursive:
                self._watch_below(self.root, announce=False)
        except OSError:
            self._close()
            raise

    def on_thread_stop(self) -> None:
        self._close()

    def queue_events(self, timeout: float) -> None:
        # Events are queued by the reader's thread as they come; this thread only notices a
        # reader that died, and stops, so that the watcher sees a dead emitter and restarts.
        fd = self._reader
        if fd is None or not fd.is_alive():
            self.stop()
            return
        self.stopped_event.wait(timeout)

    def _close(self) -> None:
        fd, self._reader = self._reader, None
        if fd is not None:
            fd.stop()  # removes every watch
            if fd.is_alive():
                fd.join(timeout=10)
        with self._maps_lock:
            self._watched = _Watched()

    # -- watches ----------------------------------------------------------------------------

    def _add_watch(self, folder: str, *, strict: bool = False) -> bool:
        """Watch ``folder``; False if it cannot be (gone, not a folder, denied: its files are
        found by the scans, which say why). Out of watches raises; so does anything else
        when ``strict`` (the root)."""
        # Under the lock throughout: the start's walk and an event of the reader's thread
        # may come to the same new folder at once (InotifyFD would register it twice).
        with self._maps_lock:
            fd = self._reader
            if fd is None:
                return False
            if folder in self._watched.by_path:
                return True
            try:
                wd = fd.add_callback(os.fsencode(folder), _MASK, self, self._callback_id)
            except OSError as exc:
                if strict or exc.errno in LIMITS:
                    raise
                return False
            if wd < 0:  # watchdog passes a refusal (EACCES) over without a watch: none made
                fd.remove_callbacks([(wd, self._callback_id)])
                if strict:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)
                return False
            self._watched.add(folder, wd)
            return True

    def _watch_below(self, top: str, *, announce: bool) -> None:
        """Watch the folders under ``top`` (watched already), each before it is listed, so that
        nothing written meanwhile is missed; ``announce``: the files found are new to the
        handler (a folder that has just arrived)."""
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError:
                continue  # gone meanwhile, or not listable: the scans say which
            for entry in entries:
                kind = folder_kind(entry)
                if kind == FOLDER:
                    if self._enters(entry.path) and self._add_watch(entry.path):
                        stack.append(entry.path)
                elif kind is None and announce:
                    self.queue_event(FileCreatedEvent(entry.path, is_synthetic=True))

    def _forget_below(self, top: str, *, keep_top: bool = False) -> None:
        """``top`` and the folders under it are gone from here (deleted, moved away): their
        watches go. A folder of the same name made afterwards gets a watch of its own."""
        with self._maps_lock:
            gone = self._watched.drop_tree(top, keep_top=keep_top)
        fd = self._reader
        if gone and fd is not None:
            fd.remove_callbacks([(wd, self._callback_id) for wd in gone])

    def _arrived(self, folder: str, event: FileSystemEvent) -> None:
        try:
            if self._add_watch(folder):
                self._watch_below(folder, announce=True)
        except OSError as exc:  # out of watches: this folder, or part of it, is not watched
            self._out_of_watches(exc)
        self.queue_event(event)

    # -- InotifyFD's callbacks (its dispatching thread) ---------------------------------------

    def on_event(self, event: InotifyEvent) -> None:
        with self._maps_lock:
            folder = self._watched.by_wd.get(event.wd)
        if folder is None or not event.name:
            return  # a folder's own deletion: its parent's event says it
        path = os.path.join(folder, os.fsdecode(event.name))
        if event.mask & _C.IN_ISDIR:
            self._folder_event(event, path)
            return
        for bit, make in _FILE_EVENTS:
            if event.mask & bit:
                self.queue_event(make(path))
                return

    def _folder_event(self, event: InotifyEvent, path: str) -> None:
        if not self._enters(path):
            return  # never watched, never announced (processed/, a hidden staging folder)
        if event.is_create:
            self._arrived(path, DirCreatedEvent(path))
        elif event.is_moved_to:
            self._arrived(path, DirMovedEvent("", path))
        elif event.is_moved_from:
            self._forget_below(path)
            self.queue_event(DirMovedEvent(path, ""))
        elif event.is_delete:
            self._forget_below(path)
            self.queue_event(DirDeletedEvent(path))

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        with self._maps_lock:
            self._watched.drop(wd)

    def on_queue_overflow(self) -> None:
        """Creates, deletions and moves were lost with the kernel's queue: the watches of the
        folders below the root are made again from what is there now."""
        self._forget_below(self.root, keep_top=True)
        if self.watch.is_recursive:
            try:
                self._watch_below(self.root, announce=False)
            except OSError as exc:
                self._out_of_watches(exc)

    def on_events_lost(self) -> None:
        self._events_lost()


class _Watched:
    """The folders watched, by path and by watch descriptor, and each one's watched
    sub-folders: forgetting a folder costs what it holds, not the whole tree (a tree kept
    with ``--after leave`` may hold tens of thousands)."""

    def __init__(self) -> None:
        self.by_wd: dict[WatchDescriptor, str] = {}
        self.by_path: dict[str, WatchDescriptor] = {}
        self._children: dict[str, set[str]] = {}

    def add(self, folder: str, wd: WatchDescriptor) -> None:
        self.by_wd[wd] = folder
        self.by_path[folder] = wd
        self._children.setdefault(os.path.dirname(folder), set()).add(folder)

    def drop(self, wd: WatchDescriptor) -> None:
        """The kernel removed this watch (its folder was deleted)."""
        folder = self.by_wd.pop(wd, None)
        if folder is not None and self.by_path.get(folder) == wd:
            self._unlink(folder)

    def drop_tree(self, top: str, *, keep_top: bool) -> list[WatchDescriptor]:
        """Forget ``top`` (unless ``keep_top``) and the folders under it; return their
        watches."""
        gone: list[WatchDescriptor] = []
        stack = [top]
        while stack:
            folder = stack.pop()
            stack.extend(self._children.get(folder, ()))
            if folder == top and keep_top:
                continue
            wd = self.by_path.get(folder)
            if wd is not None:
                gone.append(wd)
                if self.by_wd.get(wd) == folder:
                    del self.by_wd[wd]
            self._unlink(folder)
        return gone

    def _unlink(self, folder: str) -> None:
        self.by_path.pop(folder, None)
        parent = os.path.dirname(folder)
        siblings = self._children.get(parent)
        if siblings is not None:
            siblings.discard(folder)
            if not siblings:
                del self._children[parent]


def folder_kind(entry: os.DirEntry[str]) -> str | None:
    """``FOLDER``, ``LINKED_FOLDER`` (never entered, as by the scans) or None (anything else,
    a link to nothing included)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return FOLDER
        return LINKED_FOLDER if entry.is_symlink() and entry.is_dir() else None
    except OSError:  # gone meanwhile, a link loop
        return None
