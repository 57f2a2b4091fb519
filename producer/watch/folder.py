"""What belongs to the watched folder: ignore rules, the symlink boundary, output folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from producer.discovery import is_candidate, is_inside, source_text
from shared.formatting import without_control

SIDECAR_SUFFIX = ".reason.txt"
PROCESSED, FAILED = "processed", "failed"


@dataclass(frozen=True)
class WatchFolder:
    """The drop folder. ``root`` is absolute as given; links are judged by its real path.

    With the move action, ``processed/`` and ``failed/`` inside it belong to the watcher and
    are never scanned.
    """

    root: Path
    ignore: tuple[str, ...] = ()
    reserved: tuple[str, ...] = ()

    @classmethod
    def of(cls, root: Path, ignore: tuple[str, ...], *, move: bool) -> WatchFolder:
        return cls(Path(os.path.abspath(root)), ignore, (PROCESSED, FAILED) if move else ())

    def relative_path(self, path: Path) -> Path:
        try:
            return Path(path).relative_to(self.root)
        except ValueError:
            return Path(path)

    def relative(self, path: Path) -> str:
        """``path`` below the folder, for logs: as the database stores it, so that a name
        that is not UTF-8 reads ``caf\\xe9.dcm`` there too, and with control characters
        shown as ``\\x1b`` (a name must not retitle the terminal tailing the log, nor
        start a forged log line with a newline)."""
        return without_control(source_text(self.relative_path(path)), one_line=True)

    def ignored(self, path: Path) -> bool:
        """Temporary names, dotfiles, our sidecars and output folders: not (yet) images."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return True
        if not parts or any(p.startswith(".") for p in parts):
            return True
        if parts[0] in self.reserved and len(parts) > 1:
            return True
        name = parts[-1]
        return not is_candidate(Path(name)) or _matches_any(name, self.ignore)

    def contains_real(self, path: Path) -> bool:
        """Does ``path``, with every symlink resolved, stay inside the folder?"""
        return is_inside(path, self.root)


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """Case-insensitive, as upload tools are: Windows ones write ``IM1.DCM.TMP`` or
    ``a.dcm.FILEPART`` where the pattern says ``*.tmp`` (``fnmatch`` alone is case-sensitive
    on POSIX)."""
    folded = name.casefold()
    return any(fnmatchcase(folded, pattern.casefold()) for pattern in patterns)
