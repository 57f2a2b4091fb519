"""What belongs to the watched folder: ignore rules, the symlink boundary, output folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from producer.discovery import OwnFiles, is_candidate, is_inside, source_text
from shared.formatting import without_control
from shared.imaging.identity import FAILED, PROCESSED

SIDECAR_SUFFIX = ".reason.txt"


@dataclass(frozen=True)
class WatchFolder:
    """The drop folder. ``root`` is absolute as given; links are judged by its real path.

    ``processed/`` and ``failed/`` at its top belong to the watcher and are never scanned,
    watched or polled, whatever the action: the move action files images there, and a folder
    switched to ``leave`` or ``delete`` afterwards still holds them (read again, each was
    queued anew from there, a failure under its ``failed/`` path, a success as a copy at every
    start). The folders a scan does not enter (``ignored``) are not watched either.
    ``own_files`` and ``own_folders`` are this installation's own files
    that lie inside it (the SQLite database with its companions, the report folder), as
    paths below the root: never images, whatever their names.
    """

    root: Path
    ignore: tuple[str, ...] = ()
    reserved: tuple[str, ...] = ()
    own_files: frozenset[tuple[str, ...]] = frozenset()
    own_folders: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def of(cls, root: Path, ignore: tuple[str, ...], *,
           own: OwnFiles | None = None) -> WatchFolder:
        """The output folders are passed over whatever the action is (see the class)."""
        own = own or OwnFiles()
        absolute = Path(os.path.abspath(root))
        # Own paths are real paths; compared below the root's real path once here, so that
        # judging an event or a walked entry costs no system call.
        real_root = Path(os.path.realpath(absolute))
        return cls(absolute, ignore, (PROCESSED, FAILED),
                   _parts_below(real_root, own.files), _parts_below(real_root, own.folders))

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
        """Temporary names, dotfiles, our sidecars, output folders and own files: not (yet)
        images. Also asked of folders: the scans and the watch do not enter one it names
        (hidden, output and report folders, names matching an ignore pattern)."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return True
        if not parts or any(p.startswith(".") for p in parts):
            return True
        if parts[0] in self.reserved:  # the output folders themselves: never listed
            return True
        if parts in self.own_files or any(parts[:len(f)] == f for f in self.own_folders):
            return True
        name = parts[-1]
        return not is_candidate(Path(name)) or _matches_any(name, self.ignore)

    def contains_real(self, path: Path) -> bool:
        """Does ``path``, with every symlink resolved, stay inside the folder?"""
        return is_inside(path, self.root)


def _parts_below(real_root: Path, paths: frozenset[str]) -> frozenset[tuple[str, ...]]:
    """Those of ``paths`` strictly inside ``real_root``, as their parts below it. The root
    itself is left out: a report folder that *is* the watched folder cannot be skipped
    whole (the watcher warns about it instead)."""
    return frozenset(Path(p).relative_to(real_root).parts for p in paths
                     if Path(p).is_relative_to(real_root) and Path(p) != real_root)


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """Case-insensitive, as upload tools are: Windows ones write ``IM1.DCM.TMP`` or
    ``a.dcm.FILEPART`` where the pattern says ``*.tmp`` (``fnmatch`` alone is case-sensitive
    on POSIX)."""
    folded = name.casefold()
    return any(fnmatchcase(folded, pattern.casefold()) for pattern in patterns)
