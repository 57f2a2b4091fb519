"""watchdog callbacks, turned into a thread-safe inbox the service loop drains.

The observer thread only records *what happened to which path*; every decision (ignore,
symlink boundary, stability, registration) is made by the loop, in one thread.

- ``closed`` (IN_CLOSE_WRITE) and a rename *into* the folder say the writer has finished
  (a claim the tracker still checks: a preallocated file is closed between chunks);
- ``modified`` says that writing is under way: the file waits for its close;
- ``created`` only says that the file is there (the quiet period decides). It cannot say
  more: watchdog reports the files of a folder moved in, or of a new folder it started to
  watch after they were written, as creates whose close will never come (taken as
  "writing", a study a router moved in waited the whole grace period); a writer's own create
  is followed by its writes' ``modified`` events, and an empty file never parses;
- a folder created or moved in may already hold files that raised no event: scan it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)


class Change(Enum):
    SEEN = "seen"  # there, nothing said about its writer: the quiet period decides
    WRITING = "writing"
    FINISHED = "finished"
    DELETED = "deleted"
    NEW_FOLDER = "new_folder"


@dataclass(frozen=True)
class Seen:
    path: Path
    change: Change


def _path(raw: str | bytes) -> Path:
    return Path(os.fsdecode(raw))


class InboxHandler(FileSystemEventHandler):
    """Collects events; ``drain`` hands them to the loop in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Seen] = []

    def _put(self, path: Path, change: Change) -> None:
        with self._lock:
            self._items.append(Seen(path, change))

    def drain(self) -> list[Seen]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self._put(_path(event.src_path), Change.FINISHED)

    def on_created(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent):
            self._put(_path(event.src_path), Change.NEW_FOLDER)
        elif isinstance(event, FileCreatedEvent):
            self._put(_path(event.src_path), Change.SEEN)

    def on_modified(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileModifiedEvent):
            self._put(_path(event.src_path), Change.WRITING)

    def on_moved(self, event: FileSystemEvent) -> None:
        # With full events, a move from outside the folder has no source and a move out of
        # it no destination: both ends are optional.
        if event.src_path:
            self._put(_path(event.src_path), Change.DELETED)
        if not event.dest_path:
            return
        if isinstance(event, DirMovedEvent):
            self._put(_path(event.dest_path), Change.NEW_FOLDER)
        elif isinstance(event, FileMovedEvent):
            # Write-to-temp-then-rename: the new name appears complete, in one step.
            self._put(_path(event.dest_path), Change.FINISHED)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileDeletedEvent):
            self._put(_path(event.src_path), Change.DELETED)
