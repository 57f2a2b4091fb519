"""Act on complete files only: close-write/rename events, else a quiet period, then a parse.

A file becomes *ready* when
- a close-write or rename-into-folder event was seen for it, it has no hole and it parses
  completely, or
- its size and mtime have not changed for the quiet period, it has no hole and it parses
  completely, or
- it has been stable for the incomplete grace period and still does not parse: it is then
  queued anyway, and the pipeline records why it cannot be used (e.g. truncated).

Where the observer reports closes (inotify), a file written to since its last close is
still open for writing, and the quiet period alone does not make it ready: copy tools that
set the final size first (Windows, SMB) leave a file that parses as complete, its tail still
zeros, while the writer pauses. It waits for its close, or for the grace period.

A close is not proof either: such a tool may close the file between chunks, and any other
process that opens the file for writing (a Samba attribute handle, a touch-up script, an
antivirus) raises a close while the copy goes on. A file with a hole (``SEEK_HOLE``: a range
never written, the tail of a preallocated file) is therefore not ready, whatever its events
and however quiet, until the hole is filled or the grace period ends. A complete file copied
sparse (runs of zeros left as holes) waits the grace period; nothing is lost.

Only paths are held here (no file contents), so memory grows with the number of files in
flight, not with their size. A file the system cannot stat or open (a symlink loop, a name
too long, an I/O error) is handed back with its reason: a filesystem oddity never ends the
watch.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from producer.discovery import kind_of
from producer.watch.completeness import is_complete

Clock = Callable[[], float]


@dataclass
class _Candidate:
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) as last seen
    closed: bool = False
    writing: bool = False  # written to since its last close (close events only)
    next_parse: float = 0.0


@dataclass
class Verdicts:
    ready: list[Path] = field(default_factory=list)
    vanished: list[Path] = field(default_factory=list)
    denied: list[Path] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)  # path -> what the OS said
    not_files: dict[Path, str] = field(default_factory=dict)  # path -> "named pipe", ...


class StabilityTracker:
    def __init__(self, *, quiet_s: float, grace_s: float, clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time, close_events: bool = False) -> None:
        self.quiet_s = quiet_s
        self.close_events = close_events
        self.grace_s = max(grace_s, quiet_s)
        self._clock = clock
        self._wall = wall_clock
        self._files: dict[Path, _Candidate] = {}
        # Files forgotten on a delete event, with their inode if it was seen: reported as
        # vanished by the next poll unless they are back, or were only renamed.
        self._forgotten: dict[Path, tuple[int, int] | None] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return path in self._files

    def note(self, path: Path, *, closed: bool = False, writing: bool = False) -> None:
        """A file was seen (event or scan); ``closed``: the writer says it has finished;
        ``writing``: a create or modify event, so a writer has it open."""
        candidate = self._files.setdefault(path, _Candidate(stable_since=self._clock()))
        if closed:
            candidate.closed, candidate.writing = True, False
            candidate.next_parse = 0.0
        elif writing and self.close_events:
            candidate.writing = True

    def forget(self, path: Path) -> None:
        """A delete (or rename-away) event for ``path``: stop watching it. A file this tracker
        had seen is reported as vanished by the next ``poll``, unless it is back by then or
        its inode turns up under another name (renamed, not deleted)."""
        candidate = self._files.pop(path, None)
        if candidate is not None and candidate.inode is not None:
            self._forgotten[path] = candidate.inode

    def poll(self) -> Verdicts:
        now = self._clock()
        verdicts = Verdicts()
        inodes: set[tuple[int, int]] = set()  # of the files looked at in this poll
        for path, candidate in list(self._files.items()):
            try:
                st = os.stat(path)
                candidate.inode = (st.st_dev, st.st_ino)
                inodes.add(candidate.inode)
                if not stat.S_ISREG(st.st_mode):
                    # Opening a named pipe blocks until someone writes to it: never try.
                    verdicts.not_files[path] = kind_of(st.st_mode)
                elif self._judge(path, candidate, st, now):
                    verdicts.ready.append(path)
                else:
                    continue
            except FileNotFoundError:
                verdicts.vanished.append(path)
            except PermissionError:
                verdicts.denied.append(path)
            except OSError as exc:  # ELOOP, ENAMETOOLONG, EIO...: this file's, not ours
                verdicts.unreadable[path] = exc.strerror or type(exc).__name__
            del self._files[path]
        self._report_forgotten(verdicts, inodes)
        return verdicts

    def _report_forgotten(self, verdicts: Verdicts, inodes: set[tuple[int, int]]) -> None:
        forgotten, self._forgotten = self._forgotten, {}
        for path, inode in forgotten.items():
            if path in self._files or inode in inodes or os.path.lexists(path):
                continue  # noted again, renamed to a name being watched, or back already
            verdicts.vanished.append(path)

    def _judge(self, path: Path, c: _Candidate, st: os.stat_result,
               now: float) -> bool:
        if (st.st_size, st.st_mtime_ns) != (c.size, c.mtime_ns):
            first = c.size < 0
            c.size, c.mtime_ns = st.st_size, st.st_mtime_ns
            if first:
                # Noted at ``stable_since``; an old mtime (start-up scan) already proves quiet.
                age = min(max(0.0, self._wall() - st.st_mtime), self.grace_s)
                c.stable_since = min(c.stable_since, now - age)
            else:
                c.stable_since = now
            c.next_parse = 0.0
        quiet = now - c.stable_since
        if (not c.closed and quiet < self.quiet_s) or now < c.next_parse:
            return False
        if quiet < self.grace_s:
            if c.writing:
                return False  # still open for writing: its close event decides
            if has_hole(path, st.st_size):
                # Preallocated and not yet filled: a close came from a pause between chunks
                # or from another handle, and the quiet period from a stalled writer.
                c.closed, c.next_parse = False, now + max(self.quiet_s, 0.5)
                return False
        if is_complete(path) or quiet >= self.grace_s:
            # Stable but still broken after the grace period: queue it anyway, and the
            # pipeline records why it cannot be used.
            return True
        # Parsing a large file is not free: look again after another quiet period.
        c.closed, c.next_parse = False, now + max(self.quiet_s, 0.5)
        return False


def has_hole(path: Path, size: int) -> bool:
    """Does the file have a range that was never written (``SEEK_HOLE`` short of its size)?

    A file system without hole support reports the whole file as data (or refuses the
    question: ``EINVAL``, ``ENXIO``): no hole. ``OSError`` on opening is left to the caller.
    """
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_hole is None or size <= 0:
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.lseek(fd, 0, seek_hole) < size
    except OSError:
        return False
    finally:
        os.close(fd)
