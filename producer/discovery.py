"""Expand the paths a user gives into the files to submit."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.errors import PathNotFoundError

# Sidecars we write and files scanners and OSes leave behind; never images.
IGNORED_SUFFIXES = (".part", ".tmp", ".reason.txt", ".txt", ".csv", ".json", ".md", ".db")


def is_candidate(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and not name.lower().endswith(IGNORED_SUFFIXES)


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


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` in a stable order; folders are walked recursively.

    Symlinked folders are not followed, so a link cannot pull in a tree outside the one
    the user named (or loop for ever).
    """
    for path in check_paths(paths):
        if path.is_file():
            yield path.absolute()
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                candidate = Path(root, name)
                if is_candidate(candidate) and candidate.is_file():
                    yield candidate.absolute()
