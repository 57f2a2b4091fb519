"""Full scans of the folder (at start-up, periodically, after a remount), and what the
database already knows about each file found.

Events are lost (nothing fires for files that were there before; inotify drops events when
its queue overflows), so a scan is the safety net. It never reads file contents: files whose
``source`` the database already holds are reported as known, with their state, and only the
others go through the stability check and registration.

A folder that cannot be listed for a reason the next scan will not fix by itself (a path
longer than the system allows, permission denied) is named once in the log: the files in it
are never found until someone acts.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from producer.discovery import source_text
from producer.watch.folder import WatchFolder
from shared.db.clock import Clocks
from shared.db.lifecycle import LEFT_TO_SWEEPER
from shared.db.schema import Batch, Image
from shared.formatting import without_control
from shared.timeutil import as_utc

BLOCK = 500
log = logging.getLogger("mammo.watch")
_SHOWN = 240  # characters of a too-long path named in the log, its middle left out
_said: set[Path] = set()  # folders named as unlistable (until they can be listed again)


@dataclass(frozen=True)
class KnownImage:
    image_id: int
    state: str
    enqueued_at: datetime | None
    study_id: int | None
    error_code: str | None
    error_message: str | None
    identity: str = ""  # as registered: "sop:<UID>", "sha256:<hex>", ...
    # When it was registered, on this host's clock, the one file times are on: the database
    # stamped it on its own, which a server may keep hours apart (``_rows`` moves it).
    registered_here: datetime | None = None
    source: str = ""  # the path it was registered from, as the database stores it
    finished_at: datetime | None = None
    batch_name: str | None = None  # of the batch that registered it
    owed: bool = False  # its sender gave up sending it (``lifecycle.owe_message``)

    def came_from(self, path: Path) -> bool:
        """Is ``path`` the file this image was registered from (not a copy under another
        name, which waits on the same image)? Unknown sources count as its own."""
        return not self.source or self.source == source_text(path)


def walk(folder: WatchFolder, start: Path | None = None) -> Iterator[Path]:
    """Files under ``start`` (default: the root), symlinked folders never entered."""
    stack = [start or folder.root]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            # Vanished mid-scan, an I/O error: the next scan tries again. A path too long
            # or a refusal stays so until someone acts: said once.
            _say_unlistable(folder, current, exc)
            continue
        if _said:
            _said.discard(current)
        for entry in entries:
            path = Path(entry.path)
            if folder.ignored(path):
                continue
            kind = _kind(entry)
            if kind == "folder":
                stack.append(path)
            elif kind == "file":
                yield path  # a linked file: the watcher decides whether it stays inside


def _say_unlistable(folder: WatchFolder, path: Path, exc: OSError) -> None:
    if path in _said:
        return
    text = (folder.relative(path) if path != folder.root
            else without_control(source_text(path), one_line=True))
    if exc.errno == errno.ENAMETOOLONG:
        if len(text) > _SHOWN:
            text = f"{text[:_SHOWN // 2]}...{text[-_SHOWN // 2:]}"
        why = (f"its path is longer than the system allows ({len(os.fsencode(path))} bytes): "
               "no file in it can be opened; shorten the folder names")
    elif isinstance(exc, PermissionError):
        why = "permission denied; retried at each scan"
    else:
        return
    _said.add(path)
    log.warning("cannot look inside folder %s: %s", text, why)


def _kind(entry: os.DirEntry[str]) -> str | None:
    """"folder" to enter, else "file" to look at (the watcher says why it ignores a pipe, a
    link to nothing or a link loop), or None for a linked folder, never entered."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "folder"
        if not entry.is_symlink():
            return "file"
    except OSError:
        return None  # gone between the listing and the look
    try:
        return None if entry.is_dir() else "file"
    except OSError:  # a link loop
        return "file"


def known_images(sessions: sessionmaker[Session],
                 paths: Iterable[Path]) -> Iterator[tuple[Path, KnownImage | None]]:
    """Each path with the image row registered from it, if any (in blocks of ``BLOCK``)."""
    block: list[Path] = []
    for path in paths:
        block.append(path)
        if len(block) >= BLOCK:
            yield from _lookup(sessions, block)
            block = []
    if block:
        yield from _lookup(sessions, block)


def lookup_ids(session: Session, image_ids: Iterable[int]) -> dict[int, KnownImage]:
    ids = list(image_ids)
    found: dict[int, KnownImage] = {}
    for start in range(0, len(ids), BLOCK):
        rows = _rows(session, Image.id.in_(ids[start:start + BLOCK]))
        found.update((k.image_id, k) for _source, k in rows)
    return found


def _rows(session: Session, where: ColumnElement[bool]) -> Iterator[tuple[str, KnownImage]]:
    # In id order: where a path was registered more than once (a name reused for another
    # image), the newest row is the one a path lookup keeps.
    clocks = Clocks.read(session)  # once per block of rows
    stmt = (select(Image.source, Image.id, Image.state, Image.enqueued_at, Image.study_id,
                   Image.error_code, Image.error_message, Image.identity, Image.created_at,
                   Image.finished_at, Image.claim_token, Batch.name.label("batch_name"))
            .outerjoin(Batch, Batch.id == Image.batch_id)
            .where(where).order_by(Image.id))
    for row in session.execute(stmt):
        yield row.source, KnownImage(row.id, row.state, row.enqueued_at, row.study_id,
                                     row.error_code, row.error_message, row.identity,
                                     _here(clocks, row.created_at), row.source,
                                     as_utc(row.finished_at), row.batch_name,
                                     row.enqueued_at is None
                                     and row.claim_token == LEFT_TO_SWEEPER)


def _here(clocks: Clocks, stamped: datetime | None) -> datetime | None:
    moment = as_utc(stamped)
    return None if moment is None else clocks.here(moment)


def _lookup(sessions: sessionmaker[Session],
            block: list[Path]) -> Iterator[tuple[Path, KnownImage | None]]:
    sources = [source_text(p) for p in block]
    with sessions() as session:
        known = dict(_rows(session, Image.source.in_(sources)))
    for path, source in zip(block, sources, strict=True):
        yield path, known.get(source)
