"""Is the file at a known path still the image registered from it?

Scanners and PACS routers reuse file names, so a path the database knows can later hold
another image. Trusting the path alone, the watcher would take the new file for the old one:
never register it, and move or delete it as "done". A file whose inode has not changed since
a minute before its registration is the one registered (cheap: one ``stat``); otherwise its
identity is read again, the way registration read it (the SOP Instance UID of a DICOM, the
sha256 of other bytes), once per version of the file.

A file that cannot be read (``chmod 000``, a stale share handle) cannot be told apart: it is
neither the image's file nor another one until it can be read again.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from producer.watch.scanner import KnownImage
from shared.imaging.identity import file_has_identity

# Registration stats the file before stamping the row, so an untouched file's inode change
# time precedes it; the margin covers coarse file-system timestamps. The row's time is the
# database's, moved onto this host's clock (``KnownImage.registered_here``): compared as
# stamped, a server more than the margin ahead made a file written over the name since its
# registration pass for the one registered (never looked at again), and one behind had
# every untouched file read again.
_MARGIN = timedelta(seconds=60)


class Held(Enum):
    """What the file at an image's path is, to that image."""

    SAME = "same"  # the file registered
    OTHER = "other"  # another file (or a pipe, a socket) bears the name now
    GONE = "gone"  # nothing there
    UNREADABLE = "unreadable"  # a file that cannot be read: which one it is cannot be told


class RegisteredFiles:
    """Remembers which file versions were checked, so each is read at most once."""

    def __init__(self) -> None:
        self._checked: dict[Path, tuple[tuple[int, int, int, int], str, bool]] = {}

    def holds(self, path: Path, image: KnownImage) -> Held:
        """Whether ``path`` holds ``image``'s file."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return Held.GONE
        except OSError:  # EACCES on its folder, ESTALE, EIO: there may well be a file
            return Held.UNREADABLE
        if not stat.S_ISREG(st.st_mode):
            return Held.OTHER  # a pipe or socket now bears the name; opening it would block
        registered = image.registered_here
        changed = datetime.fromtimestamp(st.st_ctime, tz=UTC)
        if registered is not None and changed < registered - _MARGIN:
            return Held.SAME
        return self._read(path, image, st)

    def __len__(self) -> int:
        return len(self._checked)

    def forget(self, path: Path) -> None:
        """Drop what was checked of ``path`` (its file moved or deleted by the watcher)."""
        self._checked.pop(path, None)

    def _read(self, path: Path, image: KnownImage, st: os.stat_result) -> Held:
        """The identity of this version of the file, read once."""
        version = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._checked.get(path)
        if cached is not None and cached[:2] == (version, image.identity):
            return Held.SAME if cached[2] else Held.OTHER
        if unreadable_reason(path) is not None:
            # Not remembered: made readable again (a chmod changes ctime, a remount the
            # inode, but neither need), it is read then.
            return Held.UNREADABLE
        same = file_has_identity(path, image.identity)
        self._checked[path] = (version, image.identity, same)
        return Held.SAME if same else Held.OTHER


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be opened for reading (the system's words), or None if it can.
    Only for regular files: opening a named pipe would block."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        return None  # gone: not a reading problem
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


__all__ = ["Held", "RegisteredFiles", "unreadable_reason"]
