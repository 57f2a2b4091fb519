"""A cheap fingerprint of a DICOM file's pixel data, taken without reading the pixels whole.

Registration identifies a DICOM by its SOP Instance UID, and a file sent again under a UID
already stored is a copy of that image, unless something tells them apart
(``producer.registration._uid_clash``). Header values cannot tell a re-take of the same
view (same size, side, view, exam and patient) sent under a reused UID from a copy; its
pixels can. Hashing the whole file is out of the question at registration (nightly batches
are thousands of 20-50 MB files, and the producer reads headers only), so the fingerprint
is the Pixel Data value's length plus a hash of ``SAMPLES`` chunks of ``CHUNK`` bytes taken
at fixed fractions of it. The file's first ``HEAD`` bytes are read and parsed in memory
(pydicom, skipping every value up to the Pixel Data element; the whole file where the
header runs past them), then ``SAMPLES`` reads of ``CHUNK`` bytes: about 128 KiB of a
20-50 MB file, whatever its size (``tests/unit/test_uid_reuse_pixels.py`` holds it to it).

The fingerprint holds the transfer syntax the pixels are encoded in: pixels re-encoded by a
PACS (another syntax) have other bytes and the same image, so fingerprints of two syntaxes
are not compared (``comparable``). A file with a header edited by a router (private tags
added, a name corrected) keeps its pixel bytes, hence its fingerprint. None where the pixel
data cannot be sampled from the file as it is: no Pixel Data element, a deflated dataset
(its pixels lie inside the deflate stream), a value that runs past the end of the file
(still being written), encapsulated fragments that do not parse, or a file pydicom cannot
read (registration refuses it anyway); a missing fingerprint compares with nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.values import converters

log = logging.getLogger(__name__)

# Bumped when what is sampled changes: fingerprints of two versions are not compared.
VERSION = "p1"
SAMPLES = 16
# The first bytes of a file, read at once and parsed in memory: a header fits in them.
HEAD = 64 << 10
CHUNK = 4 << 10
# Items (offset table and fragments) walked in encapsulated pixel data before giving up:
# a mammogram has one frame, in one fragment or a few dozen.
MAX_ITEMS = 4096
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})  # where pydicom stops too
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
_ITEM_HEADER = struct.Struct("<HHL")  # encapsulated pixel data is always little endian
# The syntax of a dataset without a TransferSyntaxUID (a raw dataset), as it was read:
# (implicit VR, little endian), pydicom's guess from its first bytes.
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}


def pixel_fingerprint(path: Path) -> str | None:
    """``p1/<transfer syntax>/<pixel data length>/<hash of the sampled chunks>``, or None
    where the file's pixel data cannot be sampled (see the module's docstring)."""
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's value warnings: nothing acted on
            return _fingerprint(handle)
    except Exception as exc:  # best effort: no fingerprint, the header alone compares
        log.debug("no pixel fingerprint for %s (%s)", path.name, type(exc).__name__)
        return None


def comparable(first: str | None, second: str | None) -> bool:
    """Whether two fingerprints say something about each other: both taken, the same way,
    of pixels in the same transfer syntax."""
    if not first or not second:
        return False
    return first.split("/")[:2] == second.split("/")[:2]


def pixels_differ(first: str | None, second: str | None) -> bool:
    """Whether two files' pixel data certainly differ: comparable fingerprints that differ."""
    return comparable(first, second) and first != second


def _fingerprint(handle: BinaryIO) -> str | None:
    # Parsed from memory where the header fits in its first bytes (a file's tell() costs a
    # system call, and pydicom asks for it at every element), else from the file.
    head = handle.read(HEAD)
    whole = len(head) < HEAD  # the file is no longer than that
    try:
        found = _pixel_data(io.BytesIO(head))
    except Exception:  # a header longer than that, cut mid-element
        if whole:
            raise
        found = None
    if found is None and not whole:
        handle.seek(0)
        found = _pixel_data(handle)
    if found is None:
        return None
    syntax, start, length = found
    descriptor = handle.fileno()
    size = os.fstat(descriptor).st_size
    if length == _UNDEFINED:
        end = _fragments_end(descriptor, start, size)
        if end is None:
            return None
    else:
        end = start + length
        if end > size:
            return None  # cut short: not the pixels the complete file will hold
    digest = hashlib.blake2b(digest_size=16)
    extent = end - start
    digest.update(extent.to_bytes(8, "little"))
    for offset in _sample_offsets(extent):  # one read each, nothing read ahead
        digest.update(os.pread(descriptor, min(CHUNK, extent - offset), start + offset))
    return f"{VERSION}/{syntax}/{extent}/{digest.hexdigest()}"


def _pixel_data(source: BinaryIO) -> tuple[str, int, int] | None:
    """(transfer syntax name, value offset, value length) of the dataset's top-level Pixel
    Data element; None where there is none, or none before ``source`` ends. Parsed by
    pydicom, which skips every value but for sequences of undefined length."""
    read_preamble(source, True)  # absent in a raw dataset: the source is rewound
    meta = _read_file_meta_info(source)
    syntax = meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        return None  # the pixels lie inside the deflate stream
    implicit, little = _encoding(source, syntax)
    found: list[tuple[int, int]] = []

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        number = int(tag)  # an int compares faster than a BaseTag, for every element
        if number == _PIXEL_DATA:
            found.append((source.tell(), length))
        return number in _PIXEL_TAGS

    # Only the character set is kept (pydicom always reads it); a dataset cut short ends
    # where it is cut (pydicom's EOFError, a warning).
    read_dataset(source, implicit, little, stop_when=at_pixels, specific_tags=[_PIXEL_DATA])
    if not found:
        return None
    return (_syntax_name(syntax, implicit, little), *found[-1])


def _encoding(handle: BinaryIO, syntax: str | None) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset, as pydicom's ``read_partial`` decides
    it: from the transfer syntax, else from the first element's bytes."""
    if syntax:
        try:
            uid = UID(syntax)
            return uid.is_implicit_VR, uid.is_little_endian
        except ValueError:  # not a transfer syntax pydicom knows: the standard's default
            return False, True
    position = handle.tell()
    first = handle.read(6)
    handle.seek(position)
    if len(first) < 6:
        return True, True
    group = int.from_bytes(first[:2], "little")
    if first[4:6].decode("latin-1") in converters:  # a VR: explicit, big endian by the group
        return False, group < 1024
    return True, True


def _sample_offsets(extent: int) -> list[int]:
    """Where the chunks start: the first and last chunk of the value and evenly between."""
    if extent <= SAMPLES * CHUNK:
        return list(range(0, extent, CHUNK))  # small enough: all of it
    last = extent - CHUNK
    return [last * i // (SAMPLES - 1) for i in range(SAMPLES)]


def _fragments_end(descriptor: int, start: int, size: int) -> int | None:
    """Where encapsulated pixel data starting at ``start`` ends (its Sequence Delimitation
    Item's offset), found by skipping from item to item; None where the items do not lead
    there within the file (cut short, damaged) or within ``MAX_ITEMS``. Elements after the
    pixel data (trailing padding, a signature) are not part of it."""
    position = start
    for _ in range(MAX_ITEMS):
        header = os.pread(descriptor, _ITEM_HEADER.size, position)
        if len(header) < _ITEM_HEADER.size:
            return None
        group, element, length = _ITEM_HEADER.unpack(header)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM or length == _UNDEFINED:
            return None
        position += _ITEM_HEADER.size + length
        if position > size:
            return None
    return None


def _syntax_name(syntax: str | None, implicit: bool, little: bool) -> str:
    """The transfer syntax as the fingerprint names it: its UID, else the UID of the
    encoding it was read in."""
    if syntax:
        text = str(syntax)
        if len(text) <= 64 and RE_VALID_UID.fullmatch(text):  # the standard's form: kept as is
            return text
        return "other-" + hashlib.blake2b(text.encode(errors="replace"),
                                          digest_size=8).hexdigest()
    return str(_ENCODINGS.get((implicit, little), "unknown"))
