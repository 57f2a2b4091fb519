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
  registered again under its own name instead;
- a share unmounted for a moment while images wait in the queue fails each of them
  ``missing_file``, and the share comes back with every file intact. A ``missing_file``
  failure whose own file is here again, still holding that image, is contradicted by it:
  the file is registered again (registration retries its image). Once per version of the
  file: failing ``missing_file`` again with the file unchanged here (a worker that sees
  another folder at that path, or the share gone again), it is filed as any failure for the
  file's state.

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
from producer.watch.identity import Held
from producer.watch.scanner import KnownImage
from shared.enums import ErrorCode, ImageState

Clock = Callable[[], float]


class Pending(Enum):
    WAIT = "wait"  # its writer may still be at it: decide again later
    CHANGED = "changed"  # written to since it was queued: register it again
    COPY = "copy"  # a copy of an image whose own file vanished: register it again
    BACK = "back"  # failed missing_file, and its own file is here again: register it again


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
    watcher sees the failure; ``clock``: monotonic seconds; ``holds``: whether the file at a
    path is an image's own (``RegisteredFiles.holds``; None: any file at its path is).
    """

    def __init__(self, *, settle_s: float, clock: Clock = time.monotonic,
                 holds: Callable[[Path, KnownImage], Held] | None = None) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self.holds = holds
        self._seen: dict[Path, _Seen] = {}
        # Files handed back because they contradicted a missing_file failure: the version
        # handed back, and that failure.
        self._back: dict[Path, tuple[Version, datetime | None]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def follow(self, path: Path) -> None:
        """``path`` was queued (or found waiting on an image): remember the version the
        worker will read, unless one is remembered already."""
        if path not in self._seen and (version := Version.of(path)) is not None:
            self._seen[path] = _Seen(version)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)
        self._back.pop(path, None)

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
        if image.error_code == ErrorCode.MISSING_FILE.value:
            return self._back_again(path, image, version)
        return self._settling(path, image, version)

    def _back_again(self, path: Path, image: KnownImage, version: Version) -> Pending | None:
        """A missing_file failure while its own file is here: handed back once per version
        of the file (the same failure seen again before the retry is the same hand-back)."""
        held = self.holds(path, image) if self.holds is not None else Held.SAME
        if held in (Held.OTHER, Held.GONE):
            self.forget(path)  # the failure stands: its file is gone, whatever is here now
            return None
        handed = self._back.get(path)
        if held is Held.SAME and (handed is None or handed[0] != version
                                  or handed[1] == image.finished_at):
            self._back[path] = (version, image.finished_at)
            self._seen.pop(path, None)  # registered again: followed from there
            return Pending.BACK
        # Failed missing_file again with this very file here, or one that cannot be read:
        # filed as any failure for the file's state, once unchanged for the grace period.
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
