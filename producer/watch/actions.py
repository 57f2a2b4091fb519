"""After processing: leave the file, move it to processed/ or failed/, or delete it.

Restart-safe by construction: the database state is the trigger, and the file's presence in
the drop folder is the "not yet done" marker. If the watcher dies between the database
saying ``done`` and the move, the next scan finds the file still there, sees the terminal
state, and moves it then. The sidecar is written before the move, so a failed file is
never found in failed/ without its reason.

Where the file goes (``images.archived_path``) is committed before the rename, never after:
a watcher killed between a rename and its record lost the file for good (out of the drop
folder, so never looked at again, and at no path the database knew: reports drew no view).
Killed between the record and the rename, the file is still at its source, where readers
look while nothing is at the recorded path (``current_location``), and the next scan moves
it and records where again. A rename that fails puts the record back as it was; a record
that fails leaves the file in place, tried again at the next scan.

A sub-folder that moving or deleting emptied is removed once it stays empty
(``EmptiedFolders``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from producer.watch.folder import SIDECAR_SUFFIX, WatchFolder
from producer.watch.identity import Held, RegisteredFiles, unreadable_reason
from producer.watch.scanner import KnownImage
from shared.db.schema import Image
from shared.enums import ImageState
from shared.imaging.identity import FAILED, PROCESSED, archive_names

LEAVE, MOVE, DELETE = "leave", "move", "delete"


class AfterProcessing:
    def __init__(self, folder: WatchFolder, mode: str, log: logging.Logger,
                 registered: RegisteredFiles,
                 sessions: sessionmaker[Session] | None = None, *,
                 quiet_s: float = 5.0, remove_emptied: bool = True) -> None:
        """``sessions``: where a moved file's new path is recorded (``archived_path``), so
        that reports still find the image; None records nothing. ``remove_emptied``
        (MAMMO_WATCH_REMOVE_EMPTIED): whether a folder emptied here is removed once it has
        stayed empty and unchanged for ``quiet_s``."""
        if mode not in (LEAVE, MOVE, DELETE):
            raise ValueError(f"unknown after-processing action {mode!r}")
        self.folder = folder
        self.mode = mode
        self.log = log
        self.registered = registered
        self.sessions = sessions
        self.emptied = (EmptiedFolders(folder, log, quiet_s=quiet_s, why=f"--after {mode}")
                        if remove_emptied else None)
        self._warned: set[Path] = set()  # files that could not be moved or deleted

    def apply(self, path: Path, image: KnownImage) -> Path | None:
        """Do the configured action for a file whose image reached a terminal state."""
        if self.mode == LEAVE or not os.path.lexists(path):
            return None
        held = self.registered.holds(path, image)
        if held is Held.OTHER:
            # Another file now has this name: it is registered on its own, never moved or
            # deleted as this image's.
            self.log.info("left %s in place: it is no longer the file of image %d",
                          self.folder.relative(path), image.image_id)
            return None
        if held is Held.UNREADABLE:
            # Which file it is cannot be told: moved or deleted, it might be another image's,
            # never registered.
            self._warn_once(path, "left %s in place: it cannot be read (%s), so whether it "
                            "is still the file of image %d cannot be told; tried again at the "
                            "next scan", self.folder.relative(path),
                            unreadable_reason(path) or "unknown reason", image.image_id)
            return None
        try:
            if self.mode == DELETE:
                self._delete(path, image)
                self._gone(path)
                return None
            target = self._move(path, image)
        except OSError as exc:  # a read-only share, a name too long once numbered...
            self._refused(path, image, exc)
            return None
        if target is not None:
            self._gone(path)
        return target

    def _gone(self, path: Path) -> None:
        # The name's checked versions are kept no longer: never pruned, they grew a
        # watcher by about 1 KB per file moved (0.5-0.9 GB in 30 nights of 10,000).
        self.registered.forget(path)
        if self.emptied is not None:
            self.emptied.left(path)

    def tidy(self) -> int:
        """Remove the sub-folders emptied here that stayed so (``EmptiedFolders``)."""
        return self.emptied.tidy() if self.emptied is not None else 0

    def _delete(self, path: Path, image: KnownImage) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.log.info("deleted %s (image %d, %s)", self.folder.relative(path),
                      image.image_id, image.state)

    def _move(self, path: Path, image: KnownImage) -> Path | None:
        failed = image.state == ImageState.FAILED.value
        target_dir = self.folder.root / (FAILED if failed else PROCESSED)
        target = _free_name(target_dir / self.folder.relative_path(path), image.image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        record: _Record | None = None
        if image.came_from(path):  # a copy's new place is not where the image's file is
            try:
                record = self._record(image.image_id, target)
            except SQLAlchemyError as exc:
                # Moved unrecorded, the file would be where no report looks for it.
                self._warn_once(path, "left %s in place: where image %d goes could not be "
                                "recorded (%s); tried again at the next scan",
                                self.folder.relative(path), image.image_id,
                                type(exc).__name__)
                return None
        try:
            if failed:
                _write_sidecar(target, image)
            os.replace(path, target)
        except OSError as exc:
            if record is not None:
                self._undo(record)
            if failed:  # a reason without its file would stay in failed/ for ever
                with contextlib.suppress(OSError):
                    target.with_name(target.name + SIDECAR_SUFFIX).unlink()
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
                return None  # moved or deleted by someone else meanwhile
            raise
        self.log.info("moved %s to %s (image %d, %s)", self.folder.relative(path),
                      self.folder.relative(target), image.image_id, image.state)
        return target

    def _refused(self, path: Path, image: KnownImage, exc: OSError) -> None:
        """The file stays where it is (the next scan tries again); said once per file."""
        self._warn_once(path, "could not %s %s (image %d, %s): %s; it stays in place and is "
                        "tried again at the next scan", self.mode, self.folder.relative(path),
                        image.image_id, image.state, exc.strerror or type(exc).__name__)

    def _warn_once(self, path: Path, message: str, *args: object) -> None:
        if path not in self._warned:
            self._warned.add(path)
            self.log.warning(message, *args)

    def _record(self, image_id: int, target: Path) -> _Record | None:
        """Commit ``target`` as the image's ``archived_path`` before the file is renamed
        there; return what to put back if the rename fails (None: nothing recorded)."""
        where = os.path.realpath(target)  # never raises, even on a link loop
        if self.sessions is None or not _is_text(where):
            return None  # a name that is not UTF-8: a database text column cannot hold it
        with self.sessions() as session:
            before = session.execute(select(Image.archived_path)
                                     .where(Image.id == image_id)).scalar_one_or_none()
            session.execute(update(Image).where(Image.id == image_id)
                            .values(archived_path=where))
            session.commit()
        return _Record(image_id, where, before)

    def _undo(self, record: _Record) -> None:
        """The rename failed: the image's ``archived_path`` goes back to what it was, unless
        something else changed it meanwhile. If even that fails, no harm is done to readers:
        nothing is at the recorded path, so they look at the source, where the file is."""
        if self.sessions is None:
            return
        try:
            with self.sessions() as session:
                session.execute(update(Image).where(Image.id == record.image_id,
                                                    Image.archived_path == record.where)
                                .values(archived_path=record.before))
                session.commit()
        except SQLAlchemyError as exc:
            self.log.warning("could not take back where image %d was to be moved: %s",
                             record.image_id, type(exc).__name__)


class EmptiedFolders:
    """Sub-folders of the drop folder whose files the watcher moved or deleted, removed once
    they have stayed empty.

    A router writes each exam into a folder of its own. Its files moved or deleted, the folder
    stayed, empty, watched (one inotify watch each) and listed at every scan, for ever (397
    of 400 in a soak). Such a folder is now removed once it has stayed empty and unchanged (same
    inode and mtime) for ``quiet_s`` on this process's monotonic clock, not the file system's
    (a share's clock may be hours off): a router's folder made a moment ago and still to be
    written into is younger than that. ``os.rmdir`` removes only an empty folder, so one that
    got a file meanwhile stays. The parent, emptied in turn, waits its own quiet period. Only
    folders a scan enters (never the root, the output folders, the report folder, hidden
    ones); one that must stay (a sender's fixed folder it does not create itself) keeps a
    hidden file such as ``.keep``, never read as an image. ``--after leave`` empties nothing.
    """

    def __init__(self, folder: WatchFolder, log: logging.Logger, *, quiet_s: float,
                 why: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.log = log
        self.quiet_s = quiet_s
        self.why = why
        self.clock = clock
        # Folder -> (when it was first seen empty, its (inode, mtime) then), None: not yet.
        self._waiting: dict[Path, tuple[float, tuple[int, int]] | None] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def left(self, path: Path) -> None:
        """``path`` was moved or deleted: its folder is looked at by the next ``tidy``."""
        parent = path.parent
        if parent != self.folder.root and not self.folder.ignored(parent):
            self._waiting.setdefault(parent, None)

    def tidy(self) -> int:
        """Remove the folders that stayed empty and unchanged for the quiet period; return
        how many were removed. Never raises: a folder that cannot be removed stays."""
        now = self.clock()
        removed = 0
        for folder, since in list(self._waiting.items()):
            state = _empty_folder(folder)
            if state is None:  # gone, or not empty: its next file moved away names it again
                del self._waiting[folder]
            elif since is None or since[1] != state:
                self._waiting[folder] = (now, state)
            elif now - since[0] >= self.quiet_s:
                del self._waiting[folder]
                if self._remove(folder):
                    removed += 1
                    self.left(folder)  # its parent may be empty now
        return removed

    def _remove(self, folder: Path) -> bool:
        try:
            os.rmdir(folder)
        except OSError:  # a file came meanwhile, a mount point, no right to: it stays
            return False
        self.log.info("removed empty folder %s (emptied by %s)",
                      self.folder.relative(folder), self.why)
        return True


def _empty_folder(path: Path) -> tuple[int, int] | None:
    """A real folder with nothing in it: its (inode, mtime); None otherwise."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return None
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                return None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


@dataclass(frozen=True)
class _Record:
    """An ``archived_path`` committed ahead of its rename, and the value it replaced."""

    image_id: int
    where: str
    before: str | None


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def _free_name(target: Path, image_id: int) -> Path:
    """Never overwrite an earlier file of the same name in processed/ or failed/. The names
    are ``archive_names``'s, which readers also follow to a file an earlier release moved
    without recording where (``filed_unrecorded``)."""
    return next(name for name in archive_names(target, image_id) if not os.path.lexists(name))


def _write_sidecar(target: Path, image: KnownImage) -> None:
    sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
    text = (f"image_id: {image.image_id}\nreason: {image.error_code or 'unknown'}\n"
            f"message: {image.error_message or ''}\n")
    temporary = sidecar.with_name(f".{sidecar.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, sidecar)
