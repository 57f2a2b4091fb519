"""Is the file at a known path still the image registered from it?

Scanners and PACS routers reuse file names, so a path the database knows can later hold
another image. Trusting the path alone, the watcher would take the new file for the old one:
never register it, and move or delete it as "done". A file whose inode has not changed since
a minute before its registration is the one registered (cheap: one ``stat``); otherwise its
identity is read again, the way registration read it (the SOP Instance UID of a DICOM, the
sha256 of other bytes), once per version of the file.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from producer.watch.scanner import KnownImage
from shared.imaging.identity import file_has_identity

# Registration stats the file before stamping the row, so an untouched file's inode change
# time precedes it; the margin covers coarse file-system timestamps.
_MARGIN = timedelta(seconds=60)


class RegisteredFiles:
    """Remembers which file versions were checked, so each is read at most once."""

    def __init__(self) -> None:
        self._checked: dict[Path, tuple[tuple[int, int, int, int], str, bool]] = {}

    def holds(self, path: Path, image: KnownImage) -> bool | None:
        """Whether ``path`` holds ``image``'s file; None when there is no file there."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return False  # a pipe or socket now bears the name; opening it would block
        registered = image.registered_at
        changed = datetime.fromtimestamp(st.st_ctime, tz=UTC)
        if registered is not None and changed < registered - _MARGIN:
            return True
        version = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._checked.get(path)
        if cached is not None and cached[:2] == (version, image.identity):
            return cached[2]
        same = file_has_identity(path, image.identity)
        self._checked[path] = (version, image.identity, same)
        return same


__all__ = ["RegisteredFiles"]
