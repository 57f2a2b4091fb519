"""The one small contract every image reader follows, plus file helpers they share.

A reader answers three questions, cheapest first: can I read this (``sniff``, from the first
132 bytes only)? what is it (``read_header``, without decoding pixels, for the producer)? and
what are its pixels (``decode``, in the worker)?
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.errors import ImageTooLargeError, MissingFileError, UnreadableImageError
from shared.filehash import file_sha256
from shared.imaging.readers.messages import described
from shared.imaging.types import DecodedImage, ImageHeader

# 128-byte DICOM preamble + "DICM": enough to recognise every format we read.
HEAD_SIZE = 132

# An OSError with one of these says the host ran short (memory, open files), not the file.
_HOST_ERRNOS = frozenset({errno.ENOMEM, errno.EMFILE, errno.ENFILE})

# PatientID -> keyed pseudonym (``shared.pseudonym.Pseudonymizer``); None: no key configured.
Pseudonymize = Callable[[str], str]


@runtime_checkable
class ImageReader(Protocol):
    """One family of file formats. Implementations must be stateless and thread-safe."""

    format_name: str

    def sniff(self, head: bytes) -> bool:
        """True when ``head`` (the first 132 bytes, or fewer for a short file) is ours."""
        ...

    def read_header(self, path: Path, *, pseudonymize: Pseudonymize | None = None
                    ) -> ImageHeader:
        """Identity and metadata, without decoding the pixels.

        A format that carries a patient ID (DICOM) stores only ``pseudonymize(id)``, and
        refuses the file (``no_pseudonym_key``) when there is an ID and no ``pseudonymize``.
        """
        ...

    def decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        """The pixels; raises an ``InputError`` subclass for any file that cannot be used."""
        ...


def host_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is this host running short, not the file: a MemoryError (numpy's
    "Unable to allocate" under ``ulimit -v``, a cgroup or strict overcommit), or an OSError
    ENOMEM, EMFILE or ENFILE (``ulimit -n``, the system's file table). Readers let it
    through: ``unreadable`` blamed a healthy file, and is not retried when the same file
    is submitted again. The worker retries the image (``worker.decoding``)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in _HOST_ERRNOS


def host_fault_reason(exc: BaseException) -> str:
    """What ran short, and which limit to raise, for a log line or a failure message (an
    OSError that is none of those: its own text)."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return ("too many open files: raise the open-file limit, ulimit -n / systemd "
                    f"LimitNOFILE ({described(exc)})")
        if exc.errno == errno.EAGAIN:
            return ("no more processes: raise the process limit, ulimit -u / systemd "
                    f"TasksMax ({described(exc)})")
        if exc.errno != errno.ENOMEM:
            return described(exc)
    return ("out of memory: raise the worker's memory limit (ulimit -v, systemd MemoryMax, "
            f"a container's limit) or lower MAMMO_DECODE_PROCESSES ({described(exc)})")


def open_error(path: Path, exc: OSError) -> MissingFileError | UnreadableImageError:
    """Turn an OS error on ``path`` into the InputError the pipeline records; a host fault
    (``host_fault``: too many open files, no memory) is raised as it is."""
    if host_fault(exc):
        raise exc
    if isinstance(exc, FileNotFoundError):
        return MissingFileError(f"{path.name} no longer exists at {path.parent}.")
    if isinstance(exc, IsADirectoryError):
        return UnreadableImageError(f"{path.name} is a folder, not an image file.")
    reason = exc.strerror or type(exc).__name__
    return UnreadableImageError(f"{path.name} could not be opened: {reason}.")


def read_head(path: Path, size: int = HEAD_SIZE) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise open_error(path, exc) from exc


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise open_error(path, exc) from exc


def sha256_identity(path: Path) -> str:
    """``"sha256:<hex>"`` of the file bytes: the identity of files without a DICOM UID."""
    try:
        return f"sha256:{file_sha256(path)}"
    except OSError as exc:
        raise open_error(path, exc) from exc


def check_pixel_count(path: Path, rows: int, columns: int, max_pixels: int) -> None:
    if rows * columns > max_pixels:
        raise ImageTooLargeError(
            f"{path.name} is {columns} x {rows} pixels ({rows * columns:,}); the limit is "
            f"{max_pixels:,} pixels (setting MAMMO_MAX_IMAGE_PIXELS)."
        )
