"""Is the file at a path still the image registered from it?

An image row keeps the identity registration read: ``sop:<SOPInstanceUID>`` for a DICOM,
``sha256:<hex>`` of the bytes otherwise (after a failure's code where registration refused
it). Scanners and routers reuse file names, so whoever reads a file again by its stored path
(the worker, the exam report, the watcher before moving it) checks this first.
"""

from __future__ import annotations

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


def current_location(source: str, archived_path: str | None) -> str:
    """Where a registered file is now: the watcher's processed/ or failed/ copy when it moved
    it there (the path it came in under may hold a newer file of the same name), else the
    path it was submitted from. Either is then checked against the stored identity.

    An archived copy that cannot even be looked at (EACCES on its folder, ESTALE or EIO on
    a share: ``Path.exists`` raises these) is still where the file is: reading it then
    fails for this image alone, with that reason, rather than the error escaping whoever
    asked (a worker's whole chunk) or the source path's newer file being read instead."""
    if not archived_path:
        return source
    try:
        return archived_path if Path(archived_path).exists() else source
    except OSError:
        return archived_path


__all__ = ["current_location", "file_has_identity"]
