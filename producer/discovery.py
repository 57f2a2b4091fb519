"""Expand the paths a user gives into the files to submit."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from shared.config import Settings
from shared.db.engine import sqlite_file
from shared.errors import PathNotFoundError

# Sidecars we write and files scanners and OSes leave behind; never images.
IGNORED_SUFFIXES = (".part", ".tmp", ".reason.txt", ".txt", ".csv", ".json", ".md", ".db")
# What a patient CD or a PACS export carries beside its images (DICOM PS3.10 media: the
# DICOMDIR index, a bundled viewer, its web pages and settings). Walked as images, each one
# failed, so every imported CD ended with exit code 3 and real failures were hidden.
MEDIA_SUFFIXES = (".exe", ".dll", ".inf", ".ini", ".htm", ".html", ".xml", ".xsl", ".css",
                  ".js", ".ico", ".pdf", ".log", ".bat", ".cmd")
MEDIA_NAMES = frozenset({"dicomdir", "version", "readme"})
# What SQLite keeps beside its file while it is open (WAL mode) or mid-transaction.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")

# Told why a file found by walking was passed over (a dangling link, a named pipe...).
OnSkip = Callable[[Path, str], None]


def is_candidate(path: Path) -> bool:
    name = path.name.lower()
    return not (name.startswith(".") or name.endswith(IGNORED_SUFFIXES)
                or name.endswith(MEDIA_SUFFIXES) or name in MEDIA_NAMES)


@dataclass(frozen=True)
class OwnFiles:
    """The files this installation writes itself: its SQLite database (with its journal,
    WAL and shared-memory files) and its report folder. ``mammo run .`` in the folder that
    holds them must not queue them as images. Real paths (symlinks resolved)."""

    files: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> OwnFiles:
        database = sqlite_file(make_url(settings.database_url))
        files = (frozenset(f"{database}{suffix}" for suffix in ("", *SQLITE_COMPANIONS))
                 if database is not None else frozenset())
        return cls(files, frozenset({os.path.realpath(settings.report_dir)}))


def source_text(path: Path) -> str:
    """``path`` as the database stores it: undecodable name bytes written as ``\\xNN``.

    Linux names are bytes; one written by a Latin-1 system ("caf\\xe9.png") is not UTF-8,
    and neither PostgreSQL nor SQLite takes the surrogates Python decodes it to.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_paths(paths: Iterable[Path]) -> list[Path]:
    resolved = []
    for path in paths:
        if not path.exists():
            raise PathNotFoundError(f"Path does not exist: {path}")
        resolved.append(path)
    return resolved


def is_inside(path: Path, root: Path) -> bool:
    """Does ``path``, with every symlink resolved, lie below ``root`` (resolved too)?"""
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real != real_root and real.is_relative_to(real_root)


def link_problem(link: Path, root: Path, *, folder: str = "the folder given") -> str | None:
    """Why the symbolic link ``link``, found under ``root``, is not followed, or None when
    it leads to something inside ``root``: a link out of the folder a person named would
    read (and record) any file this user can read, such as /etc/passwd."""
    try:
        os.stat(link)
    except FileNotFoundError:
        return "symbolic link to a missing file"
    except OSError as exc:  # ELOOP: links pointing at each other
        return f"symbolic link that cannot be followed ({exc.strerror or type(exc).__name__})"
    if not is_inside(link, root):
        real, real_root = Path(os.path.realpath(link)), Path(os.path.realpath(root))
        if real == real_root:  # `up -> ..` in a sub-folder: a loop, not an escape
            return f"symbolic link to {folder} itself, a loop (never followed)"
        if real_root.is_relative_to(real):
            return f"symbolic link to a folder above {folder}, a loop (never followed)"
        return f"symbolic link to a target outside {folder} (never followed)"
    return None


def kind_of(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file's is, in words."""
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "folder" if stat.S_ISDIR(mode) else "device"


def _skip_reason(candidate: Path, root: Path) -> str | None:
    """Why a file found by walking ``root`` is not an image to read, or None."""
    if os.path.islink(candidate) and (problem := link_problem(candidate, root)):
        return problem
    try:
        mode = os.stat(candidate).st_mode
    except OSError as exc:  # gone since the listing, a name too long
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    # Opening a named pipe blocks until someone writes to it: never try.
    return None if stat.S_ISREG(mode) else f"a {kind_of(mode)}, not a regular file"


def iter_files(paths: Iterable[Path], *, own: OwnFiles = OwnFiles(),
               on_skip: OnSkip | None = None) -> Iterator[Path]:
    """Files under ``paths`` in a stable order; folders are walked recursively.

    Symlinked folders are not followed, so a link cannot pull in a tree outside the one
    the user named (or loop for ever); neither are linked files whose target lies outside
    it. A file or link named on the command line is the user's choice and is taken as is.
    Files found by walking that are not images to read (a dangling link, a named pipe) are
    passed to ``on_skip`` with the reason; hidden names, sidecars and ``own`` files are
    passed over in silence.
    """
    for path in check_paths(paths):
        if path.is_file():
            yield path.absolute()
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            real_root = os.path.realpath(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.join(real_root, d) not in own.folders)
            for name in sorted(files):
                candidate = Path(root, name)
                if not is_candidate(candidate) or os.path.join(real_root, name) in own.files:
                    continue
                reason = _skip_reason(candidate, path)
                if reason is None:
                    yield candidate.absolute()
                elif on_skip is not None:
                    on_skip(candidate.absolute(), reason)
