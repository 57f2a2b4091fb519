"""A failed file that may yet be good: leave it in place for now, or register it again.

Some failures belong to the file's state, not to its content (registration's
``RETRIED_WHEN_THE_FILE_CHANGED``: truncated, unreadable, missing_file). Moving or deleting
such a file at once loses images:

- a writer that stalls past the grace period gets its half file queued, failed
  ``truncated`` and filed away while it still has it open. The image's own file is
  therefore left in place until it has stayed unchanged for the grace period after the
  watcher saw the failure; written to since it was queued, it is registered again (and
  registration retries its image);
- a file renamed after it was queued (a temporary name the ignore patterns do not know)
  fails ``missing_file``, and the complete file under its new name, a copy of that image,
  would inherit the failure. A copy still here while the image's own file is gone is
  registered again under its own name instead.

"Written to" is judged by the file as the watcher saw it (size, mtime, inode when it was
queued), never by its mtime against the failure time: the mtime comes from the file
server's clock, or from the source by ``cp -p``/``rsync``, and one ahead of the database's
clock made an untouched truncated file look changed at every look, queued and failed again
forever.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from producer.registration import RETRIED_WHEN_THE_FILE_CHANGED
from producer.watch.scanner import KnownImage
from shared.enums import ImageState

Clock = Callable[[], float]


class Pending(Enum):
    WAIT = "wait"  # its writer may still be at it: decide again later
    CHANGED = "changed"  # written to since it was queued: register it again
    COPY = "copy"  # a copy of an image whose own file vanished: register it again


@dataclass(frozen=True)
class Version:
    """One version of a file, told apart without reading it."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> Version | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _Seen:
    version: Version
    failure: datetime | None = None  # the failure being waited out (its finished_at)
    since: float | None = None  # clock seconds: when the watcher first saw that failure


class PendingFiles:
    """The version of each followed file as the watcher saw it, and how long a failed one
    has stayed that way.

    ``settle_s``: how long a file failed for its state must stay unchanged after the
    watcher sees the failure; ``clock``: monotonic seconds.
    """

    def __init__(self, *, settle_s: float, clock: Clock = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def follow(self, path: Path) -> None:
        """``path`` was queued (or found waiting on an image): remember the version the
        worker will read, unless one is remembered already."""
        if path not in self._seen and (version := Version.of(path)) is not None:
            self._seen[path] = _Seen(version)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def pending(self, path: Path, image: KnownImage) -> Pending | None:
        """Why the file at ``path``, waiting on ``image``, must not be filed yet (None: it
        may)."""
        if (image.state != ImageState.FAILED.value
                or image.error_code not in RETRIED_WHEN_THE_FILE_CHANGED):
            self.forget(path)
            return None
        version = Version.of(path)
        if version is None:  # no file to keep (or none readable): the action decides
            self.forget(path)
            return None
        if not image.came_from(path):
            self.forget(path)
            return None if os.path.lexists(image.source) else Pending.COPY
        return self._settling(path, image, version)

    def _settling(self, path: Path, image: KnownImage, version: Version) -> Pending | None:
        now = self.clock()
        # Unknown (a failure found by the start-up scan): the wait starts now, from this
        # version. The file is kept while settling (a move needs it), so it stays known.
        seen = self._seen.setdefault(path, _Seen(version))
        if seen.version != version:
            del self._seen[path]  # registered again: the new version is followed from there
            return Pending.CHANGED
        if seen.since is None or seen.failure != image.finished_at:  # a failure new to us
            seen.failure, seen.since = image.finished_at, now
        return Pending.WAIT if now < seen.since + self.settle_s else None


__all__ = ["Pending", "PendingFiles", "Version"]
