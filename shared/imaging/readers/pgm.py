"""Netpbm grayscale (PGM) files: P5 decoded by OpenCV, P2 parsed here.

The header's maximum value (``maxval``) is the image's range. A value above it is invalid:
a few are clipped to white, as OpenCV and netpbm read them; more, and the file is refused
naming the likely cause (16-bit values written least significant byte first, a wrong maxval).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shared.errors import TruncatedImageError, UnreadableImageError
from shared.imaging.readers.raster import RasterReader

_PGM_FIELD = re.compile(rb"(?:\s+|#[^\n]*\n)*(\d+)")
_PGM_COMMENT = re.compile(rb"#[^\n]*")
# What a plain (P2) PGM's pixel values are written with: decimal digits and whitespace.
_PGM_PLAIN_CHARACTERS = b"0123456789 \t\n\v\f\r"
# A PGM value above the header's maxval is invalid; the range clips it to white. Hot pixels
# and a burned-in label (a few % of the image) are kept so. Above this share the values
# fit the header once their bytes are swapped (written least significant byte first) ...
_PGM_SWAPPED_SHARE = 0.01
# ... and above this one, whatever the cause (a wrong maxval, garbage in the unused high
# bits), too much of the picture would be white: the file is refused, naming why.
_PGM_ABOVE_MAXVAL_SHARE = 0.10


class PgmReader(RasterReader):
    """Netpbm grayscale: P5 (binary, 8 or 16-bit big-endian) and P2 (ASCII)."""

    def __init__(self) -> None:
        super().__init__("pgm", (b"P5", b"P2"))

    def sniff(self, head: bytes) -> bool:
        return head[:2] in (b"P5", b"P2") and head[2:3].isspace()

    def dimensions(self, data: bytes, path: Path) -> tuple[int, int] | None:
        columns, rows, _, _ = _pgm_header(data, path)
        return rows, columns

    def check_complete(self, data: bytes, path: Path) -> None:
        if data[:2] == b"P2":
            return  # its values are counted as they are parsed (decode_pixels)
        columns, rows, maxval, end = _pgm_header(data, path)
        expected = rows * columns * (1 if maxval < 256 else 2)
        found = len(data) - end - 1  # one whitespace byte separates maxval from the pixels
        if found < expected:
            raise TruncatedImageError(
                f"{path.name} is a truncated PGM: {expected:,} bytes of pixels expected, "
                f"{found:,} found."
            )

    def decode_pixels(self, data: bytes, path: Path) -> np.ndarray | None:
        if data[:2] == b"P2":
            return _plain_pgm_pixels(data, path)
        pixels = super().decode_pixels(data, path)  # P5 values come back as stored
        if pixels is not None:
            _check_within_maxval(pixels, _pgm_header(data, path)[2], path)
        return pixels

    def value_range(self, data: bytes, pixels: np.ndarray) -> tuple[float, float, bool]:
        # P5 samples come back from OpenCV unscaled, P2 ones from _plain_pgm_pixels: the
        # declared maxval is the true maximum.
        return 0.0, float(_pgm_header(data, Path(self.format_name))[2]), False


def _pgm_header(data: bytes, path: Path) -> tuple[int, int, int, int]:
    """(columns, rows, maxval, offset just past maxval) of a P2/P5 header."""
    values: list[int] = []
    pos = 2
    while len(values) < 3:
        match = _PGM_FIELD.match(data, pos)
        if match is None:
            raise UnreadableImageError(
                f"{path.name} has a damaged PGM header: width, height and maximum value "
                "were expected after the P2/P5 signature."
            )
        values.append(int(match.group(1)))
        pos = match.end()
    columns, rows, maxval = values
    if columns < 1 or rows < 1 or not 0 < maxval < 65536:
        raise UnreadableImageError(
            f"{path.name} has an invalid PGM header: {columns} x {rows}, maximum value {maxval}."
        )
    return columns, rows, maxval, pos


def _plain_pgm_pixels(data: bytes, path: Path) -> np.ndarray:
    """The exact pixels of a plain (P2, ASCII) PGM, parsed by numpy in one pass.

    Not by OpenCV: its ASCII reader rescales a maxval below 255 to 0-255 (maxval 63 comes
    back as 0-255), which the declared maxval then saturates; nor token by token in Python,
    one bytes object per pixel (600 MB for a 13.6 Mpx image).
    """
    columns, rows, maxval, end = _pgm_header(data, path)
    body = data[end:]
    if b"#" in body:  # a comment among the values, as OpenCV and netpbm allow
        body = _PGM_COMMENT.sub(b" ", body)
    stray = body.translate(None, _PGM_PLAIN_CHARACTERS)
    if stray:
        raise UnreadableImageError(
            f"{path.name} is a damaged plain (P2) PGM: its pixel values contain "
            f"{stray[:8]!r}, where only decimal numbers separated by spaces may stand.")
    values = np.fromstring(body, dtype=np.int64, sep=" ")
    if values.size < rows * columns:
        raise TruncatedImageError(
            f"{path.name} is a truncated PGM: {rows * columns:,} values expected, "
            f"{values.size:,} found."
        )
    pixels = values[:rows * columns]
    _check_within_maxval(pixels, maxval, path)
    np.minimum(pixels, maxval, out=pixels)  # above maxval is maxval, as OpenCV and netpbm read it
    return pixels.astype(np.uint8 if maxval < 256 else np.uint16).reshape(rows, columns)


def _check_within_maxval(pixels: np.ndarray, maxval: int, path: Path) -> None:
    """Refuse a PGM whose values are not what its header says. Scaled by its maxval, values
    above it were clipped to white, and the image was refused later as random noise, for a
    cause nobody could find."""
    above = int(np.count_nonzero(pixels > maxval))
    if above <= _PGM_SWAPPED_SHARE * pixels.size:
        return
    swapped = pixels.dtype == np.uint16 and np.count_nonzero(
        pixels.byteswap() > maxval) <= _PGM_SWAPPED_SHARE * pixels.size
    if not swapped and above <= _PGM_ABOVE_MAXVAL_SHARE * pixels.size:
        return  # a label or a patch of hot pixels: clipped
    if swapped:
        cause = ("its 16-bit values fit once their two bytes are swapped: the file was "
                 "written least significant byte first, and PGM stores 16-bit values most "
                 "significant byte first. Export it again as a standard PGM, or as a 16-bit PNG")
    else:
        cause = ("its header's maxval is wrong or its pixel data is damaged. Export it again "
                 "from its source, with a maxval at least as high as its brightest value")
    raise UnreadableImageError(
        f"{path.name} is a PGM whose pixel values exceed the maximum its header declares "
        f"(maxval {maxval}) on {above / pixels.size:.0%} of its pixels, up to "
        f"{int(pixels.max())}: {cause}.")


PGM = PgmReader()

__all__ = ["PGM", "PgmReader"]
