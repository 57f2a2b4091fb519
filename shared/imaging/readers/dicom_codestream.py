"""What a compressed frame's codestream declares of its image, read without decoding it.

A decoder allocates for the image its codestream declares, not for (0028,0010) Rows and
(0028,0011) Columns: a JPEG 2000 codestream declaring 60000 x 60000 pixels inside a 512 x 416
header took openjpeg 72 s and 21 GB before it failed. ``dicom`` compares what is read here
with the header before any plugin decodes (``frame_header``):

- JPEG (all processes) and JPEG-LS: the frame header (SOFn, SOF55), found as libjpeg finds
  it, past the segments before it and past bytes that are no marker; for JPEG-LS also an LSE
  oversize-dimension segment (ID 4), where SOF55 leaves a size to it;
- JPEG 2000 and HTJ2K: the SIZ marker, which follows SOC, in a bare codestream or in a JP2
  file's contiguous codestream box.

RLE declares no size (its segments are decoded into a buffer sized from the header).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FrameHeader", "Incomplete", "frame_header"]

_SOI = b"\xff\xd8"
_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# Bytes needed to tell the kinds apart (the JP2 signature box is the longest).
_SNIFFED = len(_JP2_SIGNATURE)
# Start-of-frame markers of JPEG (SOF0-SOF15 less DHT, JPG and DAC) and JPEG-LS (SOF55).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0), 0xF7}) - {0xC4, 0xC8, 0xCC}
_SOF55, _LSE = 0xF7, 0xF8
_LSE_OVERSIZE = 4  # LSE ID of the oversize image dimension segment (T.87 Amd. 1)
_SOS, _EOI, _TEM = 0xDA, 0xD9, 0x01
# Markers that stand alone (no length): RST0-RST7, SOI, TEM.
_STANDALONE = frozenset({*range(0xD0, 0xD9), _TEM})
# SIZ, from SOC: SOC, SIZ, Lsiz, Rsiz (2 bytes each), then Xsiz, Ysiz, XOsiz, YOsiz, XTsiz,
# YTsiz, XTOsiz, YTOsiz (4 bytes each), then Csiz (2 bytes).
_SIZ_RSIZ, _SIZ_XSIZ, _SIZ_CSIZ = 6, 8, 40
_HTJ2K_RSIZ_BIT = 1 << 14  # Rsiz of a codestream using Part 15 (HTJ2K) capabilities


class Incomplete(Exception):
    """The data ends before the frame header does: more of the frame is needed."""


@dataclass(frozen=True)
class FrameHeader:
    """The image a codestream declares. ``rows`` is 0 where a JPEG leaves its height to a
    DNL marker after the first scan, ``columns`` or ``rows`` 0 where a JPEG-LS frame header
    leaves them to an LSE segment it lacks: not declared (a decoder refuses such a frame)."""

    kind: str  # "JPEG", "JPEG-LS", "JPEG 2000" or "HTJ2K", for a message
    columns: int
    rows: int
    components: int


def frame_header(data: bytes) -> FrameHeader | None:
    """What the codestream at the start of ``data`` (a frame, or its first part) declares.

    None where ``data`` holds no JPEG, JPEG-LS or JPEG 2000 codestream (RLE), or one whose
    header cannot be found before its scan data (the decoder refuses such a codestream,
    saying why); ``Incomplete`` where ``data`` ends first.
    """
    if len(data) < _SNIFFED:
        raise Incomplete
    if data.startswith(_SOI):
        return _jpeg(data)
    if data.startswith(_SOC_SIZ):
        return _siz(data, 0)
    if data.startswith(_JP2_SIGNATURE):
        return _jp2(data)
    return None


def _jpeg(data: bytes) -> FrameHeader | None:
    """The frame header of a JPEG or JPEG-LS codestream, walking the markers as libjpeg does
    (a byte that starts no marker is skipped, with a warning there, not refused). A JPEG-LS
    size is read on to the scan: an LSE oversize-dimension segment gives the size SOF55
    leaves to it (0), and where both give one, the larger counts (a decoder may take either).
    """
    found: FrameHeader | None = None
    oversize: tuple[int, int] | None = None
    at = _next_marker(data, 2)
    while data[at + 1] not in (_SOS, _EOI):  # the header ends where the scan begins
        marker = data[at + 1]
        if marker in _STANDALONE:
            at = _next_marker(data, at + 2)
            continue
        if at + 4 > len(data):
            raise Incomplete
        if found is None and marker in _SOF_MARKERS:
            found = _sof(data, at, marker)
            if found.kind == "JPEG":
                return found
        elif marker == _LSE:
            oversize = _lse_oversize(data, at) or oversize
        at = _next_marker(data, at + 2 + int.from_bytes(data[at + 2:at + 4], "big"))
    if found is None or oversize is None:
        return found
    columns, rows = oversize
    return FrameHeader(found.kind, max(found.columns, columns), max(found.rows, rows),
                       found.components)


def _next_marker(data: bytes, at: int) -> int:
    """Where the next marker at or after ``at`` starts (its last 0xFF), past fill bytes,
    stuffed zeros and bytes that are no marker."""
    while True:
        at = data.find(b"\xff", at)
        while 0 <= at < len(data) - 1 and data[at + 1] == 0xFF:  # fill bytes
            at += 1
        if at < 0 or at + 1 >= len(data):
            raise Incomplete
        if data[at + 1] != 0x00:  # 0xFF 0x00: a stuffed zero, data
            return at
        at += 2


def _sof(data: bytes, at: int, marker: int) -> FrameHeader:
    """SOFn at ``at``: marker, Lf (2 bytes), P (1), Y (2), X (2), Nf (1)."""
    if at + 10 > len(data):
        raise Incomplete
    rows = int.from_bytes(data[at + 5:at + 7], "big")
    columns = int.from_bytes(data[at + 7:at + 9], "big")
    return FrameHeader("JPEG-LS" if marker == _SOF55 else "JPEG", columns, rows, data[at + 9])


def _lse_oversize(data: bytes, at: int) -> tuple[int, int] | None:
    """(columns, rows) of an LSE oversize-dimension segment at ``at`` (marker, Ll (2 bytes),
    ID (1) = 4, Wxy (1), then height and width of Wxy bytes each); None for another LSE."""
    if at + 6 > len(data):
        raise Incomplete
    if data[at + 4] != _LSE_OVERSIZE:
        return None
    width = data[at + 5]
    end = at + 6 + 2 * width
    if end > len(data):
        raise Incomplete
    rows = int.from_bytes(data[at + 6:at + 6 + width], "big")
    return int.from_bytes(data[at + 6 + width:end], "big"), rows


def _siz(data: bytes, at: int) -> FrameHeader | None:
    """The SIZ marker of the codestream starting (SOC) at ``at``; None where its image has
    no area (the decoder refuses that itself)."""
    if at + _SIZ_CSIZ + 2 > len(data):
        raise Incomplete
    rsiz = int.from_bytes(data[at + _SIZ_RSIZ:at + _SIZ_RSIZ + 2], "big")
    x, y, x0, y0 = (int.from_bytes(data[start:start + 4], "big")
                    for start in range(at + _SIZ_XSIZ, at + _SIZ_XSIZ + 16, 4))
    components = int.from_bytes(data[at + _SIZ_CSIZ:at + _SIZ_CSIZ + 2], "big")
    if x <= x0 or y <= y0:
        return None
    kind = "HTJ2K" if rsiz & _HTJ2K_RSIZ_BIT else "JPEG 2000"
    return FrameHeader(kind, x - x0, y - y0, components)


def _jp2(data: bytes) -> FrameHeader | None:
    """The SIZ marker of a JP2 file's first contiguous codestream box ("jp2c"), walking the
    boxes before it (length (4 bytes), type (4), an 8-byte length where the first is 1)."""
    at = 0
    while True:
        if at + 8 > len(data):
            raise Incomplete
        length = int.from_bytes(data[at:at + 4], "big")
        header = 8
        if length == 1:
            if at + 16 > len(data):
                raise Incomplete
            length, header = int.from_bytes(data[at + 8:at + 16], "big"), 16
        if data[at + 4:at + 8] == b"jp2c":
            start = at + header
            if len(data) < start + len(_SOC_SIZ):
                raise Incomplete
            return _siz(data, start) if data.startswith(_SOC_SIZ, start) else None
        if length < header:  # 0 (to the end) before the codestream, or a damaged length
            return None
        at += length
