"""The reader OpenCV-decoded formats share, and PNG and JPEG.

One class does the decoding; each format adds only what OpenCV cannot tell us: where the
image size is in the header (to refuse huge images before decoding) and how to notice a
truncated file (OpenCV decodes a truncated JPEG into a silently grey-filled image). TIFF
(``tiff.py``) and PGM (``pgm.py``) build on it. What several formats use lives here too:
grey conversion, EXIF Orientation, the TIFF directory parser (a JPEG's or PNG's EXIF block
is a TIFF structure), and NaN or infinite pixels taken as background.

The value range of 8- and 16-bit unsigned pixels is the dtype's (255, 65535): a 12-bit
image in a 16-bit PNG therefore looks dark, exactly as it would in any viewer. PGM declares
its maximum (``maxval``), so that value is used. Float, signed and 32-bit TIFFs follow no
convention (exporters write 0-1, raw detector counts, or signed offsets), so their range is
the data's own, unless a float image already lies in 0-1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from shared.errors import (
    TruncatedImageError,
    UnexpectedChannelsError,
    UnreadableImageError,
)
from shared.imaging.readers.base import (
    Pseudonymize,
    check_pixel_count,
    read_bytes,
    read_head,
    sha256_identity,
)
from shared.imaging.types import DecodedImage, ImageHeader

IMREAD_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF})
# The libjpeg warnings (jerror.h) that mean image data was lost or garbled: corrupt or
# premature entropy-coded data, a bad Huffman or arithmetic code, a lost restart marker.
_JPEG_DATA_LOST = ("Corrupt JPEG data", "Premature end of JPEG file")
# Grey stored as colour: channels within 6 % of the range of each other on all but 1 % of
# the pixels (JPEG chroma subsampling blurs colour at edges, not more).
_GREY_SPREAD = 0.06
_COLOURED_SHARE = 0.01
# EXIF Orientation: how to turn the stored pixels so they look as viewers show them.
ORIENTATIONS: dict[int, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    1: (lambda a: a, "none"),
    2: (lambda a: a[:, ::-1], "mirrored left-right"),
    3: (lambda a: a[::-1, ::-1], "rotated 180 degrees"),
    4: (lambda a: a[::-1], "mirrored top-bottom"),
    5: (lambda a: a.swapaxes(0, 1), "transposed"),
    6: (lambda a: np.rot90(a, -1), "rotated 90 degrees clockwise"),
    7: (lambda a: a[::-1, ::-1].swapaxes(0, 1), "transversed"),
    8: (lambda a: np.rot90(a, 1), "rotated 90 degrees anticlockwise"),
}
# The TIFF tags read from each image file directory: ImageWidth (256), ImageLength,
# BitsPerSample, Compression, PhotometricInterpretation (262), FillOrder, StripOffsets (273),
# Orientation, SamplesPerPixel (277), RowsPerStrip, StripByteCounts (279),
# PlanarConfiguration (284), Predictor (317), TileWidth (322), SampleFormat (339).
_TIFF_TAGS_READ = frozenset({256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 284, 317,
                             322, 339})
# The integer field types those tags are written with: SHORT, LONG, LONG8 (BigTIFF).
_TIFF_INTEGER_FORMATS = {3: "H", 4: "I", 16: "Q"}


class RasterReader:
    """A format OpenCV decodes; subclasses override the cheap size and truncation checks."""

    def __init__(self, format_name: str, magics: tuple[bytes, ...]) -> None:
        self.format_name = format_name
        self._magics = magics

    def sniff(self, head: bytes) -> bool:
        return head.startswith(self._magics)

    def read_header(self, path: Path, *, pseudonymize: Pseudonymize | None = None
                    ) -> ImageHeader:
        # Raster formats carry no patient ID (a manifest may: see producer/manifest.py).
        # The identity needs every byte anyway; the size comes from the head when cheap.
        identity = sha256_identity(path)
        try:
            size = self.dimensions(read_head(path, 4096), path)
        except UnreadableImageError:
            size = None  # e.g. a PGM comment longer than the head; decode() will judge
        rows, columns = size if size else (None, None)
        return ImageHeader(format=self.format_name, identity=identity, rows=rows,
                           columns=columns)

    def decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        data = read_bytes(path)
        for rows, columns in self.page_sizes(data, path):
            check_pixel_count(path, rows, columns, max_pixels)
        self.check_complete(data, path)
        image = self.decode_pixels(data, path)
        if image is None:
            raise self._undecodable(path)
        pixels, notes = to_grayscale(image, path)
        # A header the cheap size check could not parse is caught once decoded.
        check_pixel_count(path, pixels.shape[0], pixels.shape[1], max_pixels)
        pixels = _upright(pixels, self.orientation(data), notes)
        applied = self.applied_orientation(data)
        if applied is not None and applied != 1:
            notes["orientation"] = _orientation_note(self.format_name.upper(), applied)
        low, high, from_pixels = self.value_range(data, pixels)
        if from_pixels:
            notes["range"] = f"value range taken from the pixels: {low:g} to {high:g}"
        invert = self.inverted(data, pixels)
        if invert:
            notes["photometric"] = "stored white-is-zero (MinIsWhite): inverted"
        # The darkest value as displayed: the top of the range when the picture is inverted.
        pixels = _non_finite_as_background(pixels, high if invert else low, path, notes)
        return self.check_decoded(data, path, DecodedImage(
            pixels=pixels, format=self.format_name, max_value=high, min_value=low,
            invert=invert, notes=notes))

    def _undecodable(self, path: Path) -> UnreadableImageError:
        return UnreadableImageError(
            f"{path.name} looks like a {self.format_name.upper()} file but could not be "
            "decoded: it is damaged or uses a variant OpenCV does not read."
        )

    # Hooks; the defaults suit formats OpenCV checks itself (TIFF).
    def decode_pixels(self, data: bytes, path: Path) -> np.ndarray | None:
        """The decoded array (OpenCV's layout: rows x columns [x BGR(A)]), or None."""
        try:
            decoded: np.ndarray | None = cv2.imdecode(
                np.frombuffer(self.prepare(data), dtype=np.uint8), IMREAD_FLAGS)
        except cv2.error as exc:  # e.g. OpenCV's own pixel cap, a header lying about size
            raise self._undecodable(path) from exc
        return decoded

    def dimensions(self, data: bytes, path: Path) -> tuple[int, int] | None:
        """(rows, columns) read from the header bytes, or None if not cheaply known."""
        return None

    def page_sizes(self, data: bytes, path: Path) -> list[tuple[int, int]]:
        """(rows, columns) of every image the file holds, as far as the header tells."""
        size = self.dimensions(data, path)
        return [size] if size else []

    def check_complete(self, data: bytes, path: Path) -> None:
        """Raise TruncatedImageError when the file visibly ends early."""

    def prepare(self, data: bytes) -> bytes:
        return data

    def orientation(self, data: bytes) -> int | None:
        """The EXIF Orientation (274) the decoder left unapplied, if the file has one."""
        return None

    def applied_orientation(self, data: bytes) -> int | None:
        """The Orientation (274) the decoder applied itself (OpenCV: TIFF's), to be noted."""
        return None

    def inverted(self, data: bytes, pixels: np.ndarray) -> bool:
        """True when high values of the decoded pixels are dark (white-is-zero)."""
        return False

    def check_decoded(self, data: bytes, path: Path, image: DecodedImage) -> DecodedImage:
        """Last look at the whole file once decoded; may refuse it or add notes."""
        return image

    def value_range(self, data: bytes, pixels: np.ndarray) -> tuple[float, float, bool]:
        """(darkest, brightest, whether taken from the pixels rather than the encoding)."""
        if pixels.dtype in (np.uint8, np.uint16):
            return 0.0, float(np.iinfo(pixels.dtype).max), False
        finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
        if finite.size == 0:
            return 0.0, 1.0, False  # nothing usable: validation calls it non-finite
        low, high = float(finite.min()), float(finite.max())
        if pixels.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
            return 0.0, 1.0, False
        return low, max(high, low + 1.0), True  # one value throughout: validation: blank


class PngReader(RasterReader):
    def __init__(self) -> None:
        super().__init__("png", (b"\x89PNG\r\n\x1a\n",))

    def dimensions(self, data: bytes, path: Path) -> tuple[int, int] | None:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        columns, rows = struct.unpack(">II", data[16:24])
        return rows, columns

    def check_complete(self, data: bytes, path: Path) -> None:
        # Anywhere, not only at the end: some writers append padding after IEND.
        if data.rfind(b"IEND") < 0:
            raise TruncatedImageError(
                f"{path.name} is a truncated PNG: its closing IEND chunk is missing "
                f"({len(data):,} bytes found)."
            )


    def orientation(self, data: bytes) -> int | None:
        # The eXIf chunk (PNG 1.5) holds a bare TIFF structure; OpenCV ignores it.
        pos = 8
        while pos + 8 <= len(data):
            length = struct.unpack_from(">I", data, pos)[0]
            kind = data[pos + 4:pos + 8]
            if kind == b"eXIf":
                return _exif_orientation(data[pos + 8:pos + 8 + length])
            if kind == b"IEND":
                break
            pos += 12 + length
        return None


class JpegReader(RasterReader):
    def __init__(self) -> None:
        super().__init__("jpeg", (b"\xff\xd8\xff",))

    def dimensions(self, data: bytes, path: Path) -> tuple[int, int] | None:
        for marker, body in _jpeg_segments(data):
            if marker in _JPEG_SOF and len(body) >= 5:
                rows, columns = struct.unpack(">HH", body[1:5])
                return rows, columns
        return None

    def orientation(self, data: bytes) -> int | None:
        # Neither simplejpeg nor OpenCV (with IMREAD_UNCHANGED) applies EXIF Orientation.
        for marker, body in _jpeg_segments(data):
            if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
                return _exif_orientation(body[6:])
        return None

    def check_complete(self, data: bytes, path: Path) -> None:
        # The end-of-image marker must follow the last start-of-scan: an EXIF thumbnail has
        # its own earlier one, and entropy-coded data never holds FFDA (FF is byte-stuffed).
        # Padding written after the marker is harmless.
        if data.find(b"\xff\xd9", max(0, data.rfind(b"\xff\xda"))) < 0:
            raise TruncatedImageError(
                f"{path.name} is a truncated JPEG: its end-of-image marker (FFD9) is missing "
                f"({len(data):,} bytes found)."
            )


    def decode_pixels(self, data: bytes, path: Path) -> np.ndarray | None:
        # libjpeg only warns about corrupt entropy-coded data and fills what it lost with
        # grey; OpenCV prints the warning and returns the image. simplejpeg (the same
        # libjpeg-turbo) raises on warnings in strict mode: the warnings that mean lost or
        # garbled data refuse the file; the others (odd but harmless headers, such as
        # non-standard scan parameters or a newer JFIF version) keep the decoded pixels.
        try:
            colorspace = simplejpeg.decode_jpeg_header(data, strict=False)[2]
        except ValueError:
            colorspace = None
        if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK, or a header it cannot read
            return super().decode_pixels(data, path)
        target = "GRAY" if colorspace == "Gray" else "BGR"
        try:
            pixels: np.ndarray = simplejpeg.decode_jpeg(data, colorspace=target)
            return pixels
        except ValueError as strict:
            warning = str(strict)
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace=target, strict=False)
        except ValueError:  # not a warning but a failure: OpenCV judges the variant
            return super().decode_pixels(data, path)
        if warning.startswith(_JPEG_DATA_LOST):
            raise UnreadableImageError(
                f"{path.name} is a damaged JPEG: its compressed image data is corrupt "
                f"(libjpeg: {warning.rstrip('.')}), so part of the image would be filled "
                "with grey or garbled blocks. Export or copy it again from the source.")
        return pixels


def tiff_directories(data: bytes, limit: int) -> list[dict[int, np.ndarray]]:
    """The integer tags (SHORT, LONG or LONG8) of each image file directory of a TIFF
    structure, classic or BigTIFF: a TIFF file, or the EXIF block of a JPEG or PNG. Each tag
    read (``_TIFF_TAGS_READ``) has all its values, whether held in the entry or where it
    points, as a view on ``data`` (a strip table of any length costs nothing until used);
    one whose values lie past the bytes we have is left out.

    Stops quietly where the bytes end or stop making sense: OpenCV then judges the file.
    """
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    value_at, inline = (12, 8) if big else (8, 4)
    directories: list[dict[int, np.ndarray]] = []
    seen: set[int] = set()
    try:
        offset = struct.unpack_from(order + offset_format, data, 8 if big else 4)[0]
        while offset and offset not in seen and len(directories) < limit:
            seen.add(offset)
            count = struct.unpack_from(order + count_format, data, offset)[0]
            start = offset + struct.calcsize(count_format)
            tags: dict[int, np.ndarray] = {}
            for entry in range(min(count, 4096)):
                at = start + entry * entry_size
                tag, kind = struct.unpack_from(order + "HH", data, at)
                value_format = _TIFF_INTEGER_FORMATS.get(kind)
                if tag not in _TIFF_TAGS_READ or value_format is None:
                    continue
                values = struct.unpack_from(order + offset_format, data, at + 4)[0]
                size = values * struct.calcsize(value_format)
                where = at + value_at
                if size > inline:
                    where = struct.unpack_from(order + offset_format, data, where)[0]
                if values > 0 and where + size <= len(data):
                    tags[tag] = np.frombuffer(data, dtype=order + value_format, count=values,
                                              offset=where)
            directories.append(tags)
            offset = struct.unpack_from(order + offset_format, data,
                                        start + count * entry_size)[0]
    except struct.error:
        pass  # the directory runs past the bytes we have (e.g. only the head was read)
    return directories


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, body) of each marker segment from SOI up to the first start-of-scan."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:
            return
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        yield marker, data[pos + 4:pos + 2 + length]
        pos += 2 + length


def _exif_orientation(exif: bytes) -> int | None:
    """Orientation (274) from the first directory of an EXIF block; None if absent or odd."""
    directories = tiff_directories(exif, 1) if exif[:2] in (b"II", b"MM") else []
    value = int(directories[0][274][0]) if directories and 274 in directories[0] else None
    return value if value in ORIENTATIONS else None


def _upright(pixels: np.ndarray, orientation: int | None, notes: dict[str, str]
             ) -> np.ndarray:
    """``pixels`` turned as the EXIF Orientation says viewers show them (1: as stored)."""
    if orientation is None or orientation == 1:
        return pixels
    notes["orientation"] = _orientation_note("EXIF", orientation)
    return np.ascontiguousarray(ORIENTATIONS[orientation][0](pixels))


def _orientation_note(kind: str, orientation: int) -> str:
    return f"{kind} Orientation {orientation} applied: {ORIENTATIONS[orientation][1]}"


def _non_finite_as_background(pixels: np.ndarray, darkest: float, path: Path,
                              notes: dict[str, str]) -> np.ndarray:
    """NaN or infinite pixels (float exports mark "no data" so) set to ``darkest``, the
    stored value that displays darkest."""
    if pixels.dtype.kind != "f":
        return pixels
    finite = np.isfinite(pixels)
    if finite.all():
        return pixels
    if not finite.any():
        raise UnreadableImageError(
            f"{path.name} holds no usable pixel: every value is NaN or infinite. Export the "
            "image again from its source, with numbers for its pixels.")
    notes["non_finite"] = (f"{int(finite.size - finite.sum()):,} NaN or infinite pixel(s) "
                           "taken as background")
    return np.where(finite, pixels, pixels.dtype.type(darkest))


def to_grayscale(image: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """One grey channel. Grey saved as RGB(A) is accepted; a true colour image is refused.

    Scanners and exporters often save grey as three equal channels; lossy JPEG then makes
    them differ by a few levels, so "grey" allows a small spread between channels.
    """
    if image.ndim == 2:
        return image, {}
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0], {}
    if channels == 2:  # grey + alpha
        return np.ascontiguousarray(image[:, :, 0]), {"alpha": "alpha channel ignored"}
    colour = image[:, :, :3]
    spread = colour.max(axis=2).astype(np.float32) - colour.min(axis=2)
    top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    coloured = float((spread > _GREY_SPREAD * top).mean())
    if coloured > _COLOURED_SHARE:
        raise UnexpectedChannelsError(
            f"{path.name} is a colour image ({channels} channels, {coloured:.0%} of pixels "
            "clearly coloured); a mammogram is grayscale."
        )
    return _merge_grey_channels(colour), {"colour": "grey stored as colour channels, merged"}


def _merge_grey_channels(colour: np.ndarray) -> np.ndarray:
    """OpenCV's luma weights (B, G, R order), in the image's own dtype."""
    if colour.dtype in (np.uint8, np.uint16, np.float32):
        return cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2GRAY)
    # cvtColor refuses other depths (a signed 16-bit or 32-bit TIFF from some exporters).
    grey = colour.astype(np.float64) @ np.array([0.114, 0.587, 0.299])
    if np.issubdtype(colour.dtype, np.integer):
        info = np.iinfo(colour.dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
    return grey.astype(colour.dtype)


PNG = PngReader()
JPEG = JpegReader()

__all__ = ["IMREAD_FLAGS", "JPEG", "ORIENTATIONS", "PNG", "RasterReader", "tiff_directories",
           "to_grayscale"]
