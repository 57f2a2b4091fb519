"""Has the writer finished? Ask the file's own structure, not only the clock.

A DICOM file is complete when it parses and its (7FE0,0010) Pixel Data holds all the bytes
its header promises; a PNG ends with its IEND chunk and a JPEG with its EOI marker; a binary
(P5) PGM holds width x height samples after its header; a TIFF holds each of its image file
directories and every strip or tile they point to. A plain (P2) PGM and other formats are
judged by the quiet period alone. A file whose structure makes no sense (a damaged header)
counts as complete: its reader then refuses it with the reason, at once rather than after
the grace period. ``OSError`` (gone, permission denied) is left to the caller, which treats
those cases differently.

A half-written PGM or TIFF was taken for complete at each close of a writer that closes
between chunks: each version was queued, an image of its own (its identity is its bytes),
and all but the last failed ``truncated`` or ``unreadable``.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import InputError
from shared.imaging.readers.dicom import DICOM
from shared.imaging.readers.dicom_checks import pixel_length, transfer_syntax

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# A field of a PGM header (width, height, maxval) after whitespace or comments, as the PGM
# reader parses it; one whitespace byte follows the last.
_PGM_FIELD = re.compile(rb"(?:\s+|#[^\n]*\n)*(\d+)")
_PGM_HEAD = 4096  # a header longer than this (comments) is left to the quiet period
# TIFF: (byte order, BigTIFF) by signature.
_TIFF_SIGNATURES = {b"II*\x00": ("<", False), b"MM\x00*": (">", False),
                    b"II+\x00": ("<", True), b"MM\x00+": (">", True)}
_TIFF_INTEGERS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types offsets take
# Bytes a value of each field type takes (BYTE, ASCII, SHORT, LONG, RATIONAL, ... IFD8).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}
# (offsets, byte counts) tags: StripOffsets and StripByteCounts, TileOffsets and
# TileByteCounts.
_TIFF_DATA_TAGS = ((273, 279), (324, 325))
_TIFF_WANTED = frozenset(tag for pair in _TIFF_DATA_TAGS for tag in pair)
_TIFF_MAX_PAGES = 1024  # as the TIFF reader walks them
_TIFF_MAX_ENTRIES = 4096
_TIFF_MAX_BLOCKS = 1 << 22  # strips or tiles of one page: more is no image we read


class _Incomplete(Exception):
    """A part the file's structure places past its end: more bytes are coming."""


def is_complete(path: Path) -> bool:
    with Path(path).open("rb") as handle:
        head = handle.read(_PGM_HEAD)
        if len(head) >= 132 and head[128:132] == b"DICM":
            return _dicom_complete(Path(path))
        return _structure_complete(handle, head, handle.seek(0, 2))


def _structure_complete(handle: BinaryIO, head: bytes, size: int) -> bool:
    if head.startswith(b"\x89PNG"):
        return _tail(handle, size).endswith(_PNG_END)
    if head.startswith(b"\xff\xd8"):
        return _tail(handle, size).rstrip(b"\x00").endswith(b"\xff\xd9")
    if len(head) < 132:
        # Shorter than a DICOM preamble: no image is that small, so more bytes are coming
        # (or the grace period ends the wait and the file fails with its reason).
        return False
    if head[:2] == b"P5" and head[2:3].isspace():
        return _pgm_complete(head, size)
    if head[:4] in _TIFF_SIGNATURES:
        return _tiff_complete(handle, head, size)
    return True


def _tail(handle: BinaryIO, size: int) -> bytes:
    handle.seek(max(0, size - 64))
    return handle.read()


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


def _pgm_complete(head: bytes, size: int) -> bool:
    """Whether a binary PGM holds all the samples its header promises (1 byte each for a
    maxval below 256, else 2), as the PGM reader counts them."""
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        match = _PGM_FIELD.match(head, pos)
        if match is None:
            return True  # a damaged header (or one longer than the head): the reader judges
        fields.append(int(match.group(1)))
        pos = match.end()
    columns, rows, maxval = fields
    if columns < 1 or rows < 1 or not 0 < maxval < 65536:
        return True  # an invalid header: the reader refuses it
    samples = rows * columns * (1 if maxval < 256 else 2)
    return size - pos - 1 >= samples  # one whitespace byte separates maxval from the samples


def _tiff_complete(handle: BinaryIO, head: bytes, size: int) -> bool:
    """Whether every image file directory of a TIFF, and every strip or tile they point to,
    lies within its ``size`` bytes. Writers put the directory first (PIL) or last (libtiff,
    OpenCV): either way a half file lacks one or the other."""
    try:
        for tags in _tiff_directories(handle, head, size):
            for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
                offsets, counts = tags.get(offsets_tag, ()), tags.get(counts_tag, ())
                # Tables of unequal length (damaged) are compared as far as both go.
                ends = [at + count for at, count in zip(offsets, counts, strict=False)]
                if ends and max(ends) > size:
                    return False
    except _Incomplete:
        return False
    except (struct.error, ValueError, OverflowError):
        return True  # damaged: the reader refuses it
    return True


@dataclass(frozen=True)
class _TiffLayout:
    """How a TIFF's directories are written: classic, or BigTIFF (64-bit offsets)."""

    order: str  # "<" or ">"
    count: str  # the struct format of a directory's entry count
    entry: int  # bytes an entry takes
    pointer: str  # the struct format of an offset (and of an entry's value count)

    @classmethod
    def of(cls, head: bytes) -> tuple[_TiffLayout, int]:
        """The layout and the first directory's offset; ``_Incomplete`` for offset 0."""
        order, big = _TIFF_SIGNATURES[head[:4]]
        if big:
            layout, (bytesize, _, offset) = (cls(order, "Q", 20, "Q"),
                                             struct.unpack_from(order + "HHQ", head, 4))
            if bytesize != 8:
                raise ValueError("not a BigTIFF")
        else:
            layout, offset = cls(order, "H", 12, "I"), struct.unpack_from(order + "I", head, 4)[0]
        if not offset:
            # libtiff (OpenCV) writes the first directory's offset when it closes the file.
            raise _Incomplete
        return layout, offset


def _tiff_directories(handle: BinaryIO, head: bytes,
                      size: int) -> list[dict[int, tuple[int, ...]]]:
    """The offset and byte-count tags of each image file directory, read with seeks (a
    TIFF's directories may come after its pixels). ``_Incomplete`` where the file ends
    before a directory or a tag's values; a structure that makes no sense ends the walk."""
    layout, offset = _TiffLayout.of(head)
    count_size, pointer_size = struct.calcsize(layout.count), struct.calcsize(layout.pointer)
    directories: list[dict[int, tuple[int, ...]]] = []
    seen: set[int] = set()
    while offset and offset not in seen and len(directories) < _TIFF_MAX_PAGES:
        seen.add(offset)
        count = struct.unpack(layout.order + layout.count,
                              _read_at(handle, offset, count_size, size))[0]
        if not count:  # no image has an empty directory: zeros not yet overwritten
            raise _Incomplete
        if count > _TIFF_MAX_ENTRIES:
            break
        table = _read_at(handle, offset + count_size, count * layout.entry + pointer_size,
                         size)
        directories.append(_tiff_tags(handle, layout, table, count, size))
        offset = struct.unpack_from(layout.order + layout.pointer, table,
                                    count * layout.entry)[0]
    return directories


def _tiff_tags(handle: BinaryIO, layout: _TiffLayout, table: bytes, count: int,
               size: int) -> dict[int, tuple[int, ...]]:
    """The values of a directory's offset and byte-count tags (``_TIFF_WANTED``);
    ``_Incomplete`` when the values of any of its tags lie past the end."""
    order, pointer = layout.order, layout.pointer
    pointer_size = struct.calcsize(pointer)
    tags: dict[int, tuple[int, ...]] = {}
    for at in range(0, count * layout.entry, layout.entry):
        tag, kind = struct.unpack_from(order + "HH", table, at)
        number = struct.unpack_from(order + pointer, table, at + 4)[0]
        length = number * _TIFF_TYPE_SIZES.get(kind, 0)
        value_at = at + 4 + pointer_size
        if length <= pointer_size:  # held in the entry itself
            values = table[value_at:value_at + length]
        else:
            where = struct.unpack_from(order + pointer, table, value_at)[0]
            if where + length > size:
                raise _Incomplete
            values = b""
        integer = _TIFF_INTEGERS.get(kind)
        if tag not in _TIFF_WANTED or integer is None or not 0 < number <= _TIFF_MAX_BLOCKS:
            continue
        if not values:
            values = _read_at(handle, where, length, size)
        tags[tag] = struct.unpack(f"{order}{number}{integer}", values)
    return tags


def _read_at(handle: BinaryIO, offset: int, length: int, size: int) -> bytes:
    """``length`` bytes at ``offset``; ``_Incomplete`` when the file ends before them."""
    if offset + length > size:
        raise _Incomplete
    handle.seek(offset)
    data = handle.read(length)
    if len(data) < length:  # cut short since its size was taken: being rewritten
        raise _Incomplete
    return data
