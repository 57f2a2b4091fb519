"""PNG, JPEG, TIFF and PGM files, decoded by OpenCV.

One class does the decoding; each format adds only what OpenCV cannot tell us: where the
image size is in the header (to refuse huge images before decoding) and how to notice a
truncated file (OpenCV decodes a truncated JPEG into a silently grey-filled image).

The value range of 8- and 16-bit unsigned pixels is the dtype's (255, 65535): a 12-bit
image in a 16-bit PNG therefore looks dark, exactly as it would in any viewer. PGM declares
its maximum (``maxval``), so that value is used. Float, signed and 32-bit TIFFs follow no
convention (exporters write 0-1, raw detector counts, or signed offsets), so their range is
the data's own, unless a float image already lies in 0-1.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from shared.errors import (
    NotAMammogramError,
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

_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH
# At most this many TIFF pages are walked for their sizes (a loop of IFD offsets ends too).
_MAX_TIFF_PAGES = 1024
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF})
# The libjpeg warnings (jerror.h) that mean image data was lost or garbled: corrupt or
# premature entropy-coded data, a bad Huffman or arithmetic code, a lost restart marker.
_JPEG_DATA_LOST = ("Corrupt JPEG data", "Premature end of JPEG file")
_PGM_FIELD = re.compile(rb"(?:\s+|#[^\n]*\n)*(\d+)")
_PGM_COMMENT = re.compile(rb"#[^\n]*")
# What a plain (P2) PGM's pixel values are written with: decimal digits and whitespace.
_PGM_PLAIN_CHARACTERS = b"0123456789 \t\n\v\f\r"
# Grey stored as colour: channels within 6 % of the range of each other on all but 1 % of
# the pixels (JPEG chroma subsampling blurs colour at edges, not more).
_GREY_SPREAD = 0.06
_COLOURED_SHARE = 0.01
# A later TIFF page smaller than this share of the first in either dimension is a preview
# (thumbnail, pyramid level: at most half size); a larger one is another image.
_PREVIEW_SHARE = 0.6
# EXIF Orientation: how to turn the stored pixels so they look as viewers show them.
_ORIENTATIONS: dict[int, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    1: (lambda a: a, "none"),
    2: (lambda a: a[:, ::-1], "mirrored left-right"),
    3: (lambda a: a[::-1, ::-1], "rotated 180 degrees"),
    4: (lambda a: a[::-1], "mirrored top-bottom"),
    5: (lambda a: a.T, "transposed"),
    6: (lambda a: np.rot90(a, -1), "rotated 90 degrees clockwise"),
    7: (lambda a: a[::-1, ::-1].T, "transversed"),
    8: (lambda a: np.rot90(a, 1), "rotated 90 degrees anticlockwise"),
}
# ImageWidth, ImageLength, PhotometricInterpretation, Orientation.
_TIFF_TAGS_READ = frozenset({256, 257, 262, 274})


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
                np.frombuffer(self.prepare(data), dtype=np.uint8), _FLAGS)
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
        return _plain_pgm_pixels(data, path) if data[:2] == b"P2" else super().decode_pixels(
            data, path)

    def value_range(self, data: bytes, pixels: np.ndarray) -> tuple[float, float, bool]:
        # P5 samples come back from OpenCV unscaled, P2 ones from _plain_pgm_pixels: the
        # declared maxval is the true maximum.
        return 0.0, float(_pgm_header(data, Path(self.format_name))[2]), False


class TiffReader(RasterReader):
    """TIFF may hold several pages, and OpenCV decodes only the first. The largest page is
    the image; reduced-resolution pages (thumbnails, pyramid levels), before or after it,
    are ignored; a second full-size page means the file holds several images (views, a
    tomosynthesis stack), and scoring only one would silently drop the rest, so the file is
    refused, like a multi-frame DICOM."""

    def __init__(self) -> None:
        super().__init__("tiff", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))

    def dimensions(self, data: bytes, path: Path) -> tuple[int, int] | None:
        pages = _tiff_pages(data)
        return (pages[0].rows, pages[0].columns) if pages else None

    def page_sizes(self, data: bytes, path: Path) -> list[tuple[int, int]]:
        # Every page, not only the first: OpenCV allocates a page in full before its own
        # cap applies, and a 1 MB deflated TIFF page can inflate to gigabytes.
        return [(page.rows, page.columns) for page in _tiff_pages(data)]

    def decode_pixels(self, data: bytes, path: Path) -> np.ndarray | None:
        main = _main_page(_tiff_pages(data))
        return super().decode_pixels(data, path) if main == 0 else _read_page(path, main)

    def inverted(self, data: bytes, pixels: np.ndarray) -> bool:
        # PhotometricInterpretation 0 (MinIsWhite): OpenCV inverts it only on its 8-bit path
        # (libtiff's RGBA reader, which also takes 1-4 bit images); 16-bit, 32-bit and float
        # pages come back as stored, dark where the film is clear.
        pages = _tiff_pages(data)
        page = pages[_main_page(pages)] if pages else None
        return page is not None and page.photometric == 0 and pixels.dtype != np.uint8

    def check_decoded(self, data: bytes, path: Path, image: DecodedImage) -> DecodedImage:
        pages = cv2.imcount(str(path))
        if pages <= 1:
            return image
        main = _main_page(_tiff_pages(data))
        rows, columns = image.pixels.shape
        for index in range(pages):  # decoded one at a time: previews are small
            if index == main:
                continue
            page = _read_page(path, index)
            if page is None:
                raise UnreadableImageError(
                    f"{path.name} is a TIFF of {pages} pages whose page {index + 1} cannot be "
                    "decoded: the file is damaged.")
            if page.shape[0] >= _PREVIEW_SHARE * rows and page.shape[1] >= _PREVIEW_SHARE * columns:
                raise NotAMammogramError(
                    f"{path.name} is a TIFF holding several full-size images (page "
                    f"{index + 1} of {pages} is {page.shape[1]} x {page.shape[0]} px, about "
                    f"as large as the image on page {main + 1}, {columns} x {rows}); only "
                    "single 2-D mammograms are classified: save each view as its own file.")
        notes = {**image.notes, "pages": f"{pages - 1} reduced-resolution TIFF page(s) ignored"}
        return dataclasses.replace(image, notes=notes)


@dataclasses.dataclass(frozen=True)
class _TiffPage:
    rows: int
    columns: int
    photometric: int | None  # PhotometricInterpretation (262); 0 = MinIsWhite


def _tiff_pages(data: bytes) -> list[_TiffPage]:
    """Each page's size and photometric, from its image file directory."""
    pages: list[_TiffPage] = []
    for tags in _tiff_directories(data, _MAX_TIFF_PAGES):
        if 256 not in tags or 257 not in tags:  # ImageWidth, ImageLength
            break
        pages.append(_TiffPage(tags[257], tags[256], tags.get(262)))
    return pages


def _main_page(pages: list[_TiffPage]) -> int:
    """The index of the largest page (the first of equals): previews may come first."""
    if not pages:
        return 0
    areas = [page.rows * page.columns for page in pages]
    return areas.index(max(areas))


def _read_page(path: Path, index: int) -> np.ndarray | None:
    try:
        ok, page = cv2.imreadmulti(str(path), start=index, count=1, flags=_FLAGS)
    except cv2.error:
        return None
    return page[0] if ok and page else None


def _tiff_directories(data: bytes, limit: int) -> list[dict[int, int]]:
    """The integer tags (SHORT, LONG or LONG8) of each image file directory of a TIFF
    structure, classic or BigTIFF: a TIFF file, or the EXIF block of a JPEG or PNG.

    Stops quietly where the bytes end or stop making sense: OpenCV then judges the file.
    """
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    value_at = 12 if big else 8
    directories: list[dict[int, int]] = []
    seen: set[int] = set()
    try:
        offset = struct.unpack_from(order + offset_format, data, 8 if big else 4)[0]
        while offset and offset not in seen and len(directories) < limit:
            seen.add(offset)
            count = struct.unpack_from(order + count_format, data, offset)[0]
            start = offset + struct.calcsize(count_format)
            tags: dict[int, int] = {}
            for entry in range(min(count, 4096)):
                at = start + entry * entry_size
                tag, kind = struct.unpack_from(order + "HH", data, at)
                if tag in _TIFF_TAGS_READ:
                    value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
                    if value_format:
                        tags[tag] = struct.unpack_from(order + value_format, data,
                                                       at + value_at)[0]
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
    directories = _tiff_directories(exif, 1) if exif[:2] in (b"II", b"MM") else []
    value = directories[0].get(274) if directories else None
    return value if value in _ORIENTATIONS else None


def _upright(pixels: np.ndarray, orientation: int | None, notes: dict[str, str]
             ) -> np.ndarray:
    """``pixels`` turned as the EXIF Orientation says viewers show them (1: as stored)."""
    if orientation is None or orientation == 1:
        return pixels
    turn, words = _ORIENTATIONS[orientation]
    notes["orientation"] = f"EXIF Orientation {orientation} applied: {words}"
    return np.ascontiguousarray(turn(pixels))


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
    np.minimum(pixels, maxval, out=pixels)  # above maxval is maxval, as OpenCV and netpbm read it
    return pixels.astype(np.uint8 if maxval < 256 else np.uint16).reshape(rows, columns)


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


TIFF = TiffReader()
PNG = PngReader()
JPEG = JpegReader()
PGM = PgmReader()

__all__ = ["JPEG", "PGM", "PNG", "TIFF", "RasterReader", "TiffReader"]
