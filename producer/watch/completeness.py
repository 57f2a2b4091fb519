"""Has the writer finished? Ask the file's own structure, not only the clock.

A DICOM file is complete when it parses and its (7FE0,0010) Pixel Data holds all the bytes
its header promises; a PNG ends with its IEND chunk and a JPEG with its EOI marker. Other
formats are judged by the quiet period alone. ``OSError`` (gone, permission denied) is left
to the caller, which treats those cases differently.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from shared.errors import InputError
from shared.imaging.readers.dicom import DICOM
from shared.imaging.readers.dicom_checks import pixel_length, transfer_syntax

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_complete(path: Path) -> bool:
    with Path(path).open("rb") as handle:
        head = handle.read(132)
        if len(head) >= 132 and head[128:132] == b"DICM":
            return _dicom_complete(Path(path))
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read()
    if head.startswith(b"\x89PNG"):
        return tail.endswith(_PNG_END)
    if head.startswith(b"\xff\xd8"):
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    # Shorter than a DICOM preamble: no image is that small, so more bytes are coming (or
    # the grace period ends the wait and the file fails with its reason).
    return len(head) >= 132


def _dicom_complete(path: Path) -> bool:
    with warnings.catch_warnings():
        # A half-written file makes pydicom warn about short values; that is the answer.
        warnings.simplefilter("ignore")
        try:
            ds = DICOM.dataset(path)  # a deflate bomb inflates no further than its header allows
            pixel_length(ds, transfer_syntax(ds, path), path)
            return True
        except InputError:
            return False
        except OSError:
            raise
        except Exception:  # pydicom raises many types on a short file; all mean "not yet"
            return False
