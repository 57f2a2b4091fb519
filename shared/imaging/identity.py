"""Is the file at a path still the image registered from it?

An image row keeps the identity registration read: ``sop:<SOPInstanceUID>`` for a DICOM,
``sha256:<hex>`` of the bytes otherwise (after a failure's code where registration refused
it). Scanners and routers reuse file names, so whoever reads a file again by its stored path
(the worker, the exam report, the watcher before moving it) checks this first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from shared.errors import InputError
from shared.imaging.header_bounds import fitted_identity
from shared.imaging.readers import read_header
from shared.imaging.readers.base import sha256_identity


def file_has_identity(path: Path, identity: str) -> bool:
    """Whether ``path`` holds the file registered as ``identity`` (False if unreadable)."""
    try:
        if identity.startswith("sop:"):
            # The PatientID is passed through unchanged and dropped: only the UID counts.
            return read_header(path, pseudonymize=str).identity == fitted_identity(identity)
        if "sha256:" in identity:  # possibly after a failure's code prefix
            return identity.endswith(sha256_identity(path))
    except InputError:
        return False
    return True  # "path:" identities (unreadable at registration): nothing to compare by


# The drop-folder watcher's own folders at the top of the folder it watches: ``--after move``
# files a finished image there under its path below that folder (``archive_names``).
PROCESSED, FAILED = "processed", "failed"


def archive_names(target: Path, image_id: int) -> Iterator[Path]:
    """The names ``--after move`` tries, in order, for image ``image_id``'s file filed at
    ``target`` (``processed/`` or ``failed/``, then the file's path below the watched
    folder); it takes the first that is free, so nothing there is ever overwritten:
    ``target``, then ``.image-ID`` added before the suffix, then ``.image-ID.2`` and so on."""
    yield target
    n = 1
    while True:
        again = f".{n}" if n > 1 else ""
        yield target.with_name(f"{target.stem}.image-{image_id}{again}{target.suffix}")
        n += 1


def current_location(source: str, archived_path: str | None, *, image_id: int | None = None,
                     identity: str | None = None) -> str:
    """Where a registered file is now: the watcher's processed/ or failed/ copy when it moved
    it there (the path it came in under may hold a newer file of the same name), else the
    path it was submitted from. Either is then checked against the stored identity.

    An archived copy that cannot even be looked at (EACCES on its folder, ESTALE or EIO on
    a share: ``Path.exists`` raises these) is still where the file is: reading it then
    fails for this image alone, with that reason, rather than the error escaping whoever
    asked (a worker's whole chunk) or the source path's newer file being read instead.

    With no ``archived_path`` and the image's ``image_id`` and ``identity`` given, a file
    that a watcher of a release before ``images.archived_path`` (migration 0008) moved to
    processed/ without saying where is found there (``filed_unrecorded``)."""
    if not archived_path:
        if image_id is None or identity is None:
            return source
        return filed_unrecorded(source, image_id, identity) or source
    try:
        return archived_path if Path(archived_path).exists() else source
    except OSError:
        return archived_path


def filed_unrecorded(source: str, image_id: int, identity: str) -> str | None:
    """Where ``mammo watch --after move`` of a release before migration 0008 filed the done
    image ``image_id`` registered from ``source``, when that file is no longer at
    ``source`` (gone, or another file under its name: scanners reuse names); None when it
    is still there, or filed nowhere to be found.

    Such a watcher moved a done file to ``processed/`` at the top of its folder, under the
    same path below it, numbered when the name was taken (``archive_names``), and recorded
    nothing: its image's ``archived_path`` is NULL. Which folder was watched is not stored,
    so each folder above ``source`` is tried as that top. A file found there is taken only
    when it is the same file by the identity registration read (``file_has_identity``: the
    SOP Instance UID of a DICOM, the sha256 of other files); an image known by its path
    alone (unreadable at registration) is never looked for. Not ``failed/``: no reader reads
    a failed image's file but a retry, which reads the file sent again under its name (its
    ``archived_path`` is cleared for that), never the one filed as failed.

    Costs a ``stat`` per folder above ``source`` when nothing is filed there (an image of a
    folder left in place); the source's identity is read only when a file is found."""
    if not identity.startswith("sop:") and "sha256:" not in identity:
        return None  # nothing to tell the image's file from another of its name
    path = Path(source)
    filed = [name for top in path.parents
             for name in _filed_names(top / PROCESSED / path.relative_to(top), image_id)]
    if not filed or (os.path.lexists(path) and _holds(path, identity)):
        return None
    return next((str(name) for name in filed if _holds(name, identity)), None)


def _filed_names(target: Path, image_id: int) -> Iterator[Path]:
    """The names at ``target`` that hold a file, of those the watcher would have tried
    (``archive_names``): the first, then the numbered ones up to the first free."""
    if not os.path.isdir(target.parent):
        return
    names = archive_names(target, image_id)
    if os.path.lexists(next(names)):
        yield target
    for name in names:
        if not os.path.lexists(name):
            return
        yield name


def _holds(path: Path, identity: str) -> bool:
    try:
        return os.path.isfile(path) and file_has_identity(path, identity)
    except OSError:  # a file it may not read: not the one to read instead
        return False


__all__ = ["FAILED", "PROCESSED", "archive_names", "current_location", "file_has_identity",
           "filed_unrecorded"]
