"""Deflated Explicit VR Little Endian files (1.2.840.10008.1.2.1.99), inflated with a cap.

pydicom inflates the whole dataset of such a file at once, pixels included, even when asked
to stop before them: a 1 MB file can inflate to gigabytes before any size check runs. Here
the dataset is inflated lazily, only as far as pydicom reads, and never past ``limit``
bytes: a header read stops at the Pixel Data element, and a full read is capped by what the
header declares (the caller decides the cap).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

# Bytes read from the file, and at most inflated from them, per step: small against any
# cap, so little is inflated ahead of what pydicom reads.
_STEP = 256 << 10


class InflateLimitError(Exception):
    """The dataset inflates past the cap; ``limit`` is the cap in bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the deflated dataset inflates past {limit:,} bytes")
        self.limit = limit


class InflatingStream:
    """A read-only, seekable file over the inflated dataset, inflated on demand.

    Everything inflated so far is kept, since pydicom seeks back (after peeking at an
    element); at most ``limit`` bytes are ever held. A stream cut short reads as ending
    there, so pydicom sees a truncated dataset, as it would in an uncompressed file.
    """

    def __init__(self, source: BinaryIO, limit: int, name: str) -> None:
        self.name = name
        self._source = source
        self._limit = limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header
        self._data = bytearray()
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = self._limit + 1 if size < 0 else self._position + size
        self._fill(end)
        chunk = bytes(memoryview(self._data)[self._position:end])  # one copy, not two
        self._position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(self._limit + 1)
            offset += len(self._data)
        elif whence == 1:
            offset += self._position
        self._position = max(offset, 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def _fill(self, end: int) -> None:
        """Inflate until ``end`` bytes are held or the stream ends; past the cap, raise."""
        while len(self._data) < end and not self._inflater.eof:
            room = self._limit - len(self._data)
            if room <= 0:
                raise InflateLimitError(self._limit)
            pending = self._inflater.unconsumed_tail or self._source.read(_STEP)
            if not pending:
                return
            # max_length bounds the output of this step, whatever the compression ratio.
            self._data += self._inflater.decompress(pending, min(room, _STEP))


def deflated_meta(handle: BinaryIO) -> tuple[bytes | None, FileMetaDataset] | None:
    """(preamble, file meta) when ``handle`` holds a deflated dataset, leaving it at the
    dataset's first byte; None for any other file, or one whose meta pydicom cannot read
    (its own reader then reports that file as before)."""
    try:
        preamble = read_preamble(handle, True)
        file_meta = _read_file_meta_info(handle)
    except Exception:  # a damaged meta header: not ours to report
        return None
    if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    return preamble, file_meta


def read_deflated(path: Path, handle: BinaryIO, meta: tuple[bytes | None, FileMetaDataset],
                  *, limit: int, stop_before_pixels: bool = False,
                  specific_tags: list[str] | None = None) -> FileDataset:
    """The dataset ``dcmread`` would return, from ``handle`` positioned by ``deflated_meta``,
    inflating at most ``limit`` bytes (``InflateLimitError`` beyond)."""
    stream = InflatingStream(handle, limit, str(path))
    tags: list[BaseTag | int] | None = [Tag(t) for t in specific_tags] if specific_tags else None
    dataset = read_dataset(stream, False, True,  # type: ignore[arg-type]  # duck-typed file
                           stop_when=_at_pixel_data if stop_before_pixels else None,
                           specific_tags=tags)
    preamble, file_meta = meta
    ds = FileDataset(str(path), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
