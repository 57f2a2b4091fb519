"""PNG, JPEG, TIFF and PGM files, decoded by OpenCV.

One class does the decoding; each format adds only what OpenCV cannot tell us: where the
image size is in the header (to refuse huge images before decoding) and how to notice a
truncated file (OpenCV decodes a truncated JPEG into a silently grey-filled image). One
layout OpenCV misreads is decoded here: a TIFF whose samples of more than 8 bits are stored
plane by plane (PlanarConfiguration 2), which OpenCV reads as if interleaved; only its
uncompressed strips are read, anything else is refused.

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
# Samples of planes stored separately that are decoded here (OpenCV reads such pages as if
# their samples were interleaved unless they hold 8 bits a sample): (BitsPerSample,
# SampleFormat) -> numpy type code. The types OpenCV gives the same page stored interleaved.
_PLANAR_TYPES = {(16, 1): "u2", (16, 2): "i2", (32, 1): "u4", (32, 2): "i4", (32, 3): "f4",
                 (64, 3): "f8"}
# A PGM value above the header's maxval is invalid; the range clips it to white. Hot pixels
# and a burned-in label (a few % of the image) are kept so. Above this share the values
# fit the header once their bytes are swapped (written least significant byte first) ...
_PGM_SWAPPED_SHARE = 0.01
# ... and above this one, whatever the cause (a wrong maxval, garbage in the unused high
# bits), too much of the picture would be white: the file is refused, naming why.
_PGM_ABOVE_MAXVAL_SHARE = 0.10


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
        pages = _tiff_pages(data)
        main = _main_page(pages)
        if pages and pages[main].separate_wide_samples:
            return _separate_planes(data, pages[main], path)
        return super().decode_pixels(data, path) if main == 0 else _read_page(path, main)

    def applied_orientation(self, data: bytes) -> int | None:
        # OpenCV turns every TIFF page as its Orientation says, at any depth (and so does
        # _separate_planes); a value outside 1-8 it ignores.
        pages = _tiff_pages(data)
        orientation = pages[_main_page(pages)].orientation if pages else None
        return orientation if orientation in _ORIENTATIONS else None

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
    """One image file directory: the tags read (``_TIFF_TAGS_READ``), each all its values."""

    tags: dict[int, np.ndarray]

    def value(self, tag: int, default: int) -> int:
        """The tag's (first) value, ``default`` (TIFF's) when it is absent."""
        return int(self.tags[tag][0]) if tag in self.tags else default

    def values(self, tag: int, default: int) -> tuple[int, ...]:
        """One value a sample (BitsPerSample, SampleFormat), even when written once for all."""
        found = tuple(int(v) for v in self.tags[tag][:self.samples]) if tag in self.tags \
            else (default,)
        return found if len(found) == self.samples else found[:1] * self.samples

    @property
    def rows(self) -> int:
        return self.value(257, 0)

    @property
    def columns(self) -> int:
        return self.value(256, 0)

    @property
    def photometric(self) -> int | None:  # PhotometricInterpretation; 0 = MinIsWhite
        return int(self.tags[262][0]) if 262 in self.tags else None

    @property
    def orientation(self) -> int:
        return self.value(274, 1)

    @property
    def samples(self) -> int:  # SamplesPerPixel
        return self.value(277, 1)

    @property
    def separate_wide_samples(self) -> bool:
        """Several samples a pixel, each stored in its own plane (PlanarConfiguration 2), at
        more than 8 bits: OpenCV reads these planes as if interleaved (libtiff's RGBA
        reader, its 8-bit path, gets them right)."""
        return self.samples > 1 and self.value(284, 1) == 2 and max(self.values(258, 1)) > 8


def _tiff_pages(data: bytes) -> list[_TiffPage]:
    """Each page's tags, from its image file directory, up to the first without a size."""
    pages: list[_TiffPage] = []
    for tags in _tiff_directories(data, _MAX_TIFF_PAGES):
        if 256 not in tags or 257 not in tags:  # ImageWidth, ImageLength
            break
        pages.append(_TiffPage(tags))
    return pages


def _separate_planes(data: bytes, page: _TiffPage, path: Path) -> np.ndarray:
    """The pixels of a page whose samples (more than 8 bits each) are stored plane by plane,
    in OpenCV's layout: rows x columns x samples, colour as BGR(A), turned as the page's
    Orientation says. Only uncompressed strips are read; anything else is refused, never
    handed to OpenCV, which would return the planes scrambled."""
    rows, columns, samples = page.rows, page.columns, page.samples
    bits = page.values(258, 1)  # BitsPerSample
    formats = page.values(339, 1)  # SampleFormat: 1 unsigned, 2 signed, 3 float
    code = _PLANAR_TYPES.get((bits[0], formats[0]))
    unsupported = _planar_layout_unsupported(page, bits, formats)
    if unsupported or code is None:
        depth = "/".join(str(b) for b in dict.fromkeys(bits))
        why = unsupported or f"in a sample format it does not take (SampleFormat {formats[0]})"
        raise UnreadableImageError(
            f"{path.name} stores its colour planes separately (TIFF PlanarConfiguration 2) at "
            f"{depth} bits per sample, {why}, which this reader cannot decode reliably; export "
            "it as single-channel grey or as interleaved RGB.")
    stored = np.dtype(("<" if data[:2] == b"II" else ">") + code)
    strip_rows = min(page.value(278, 2**32 - 1), rows)  # RowsPerStrip; absent: one strip
    no_table = np.zeros(0, dtype=np.uint64)
    offsets, byte_counts = page.tags.get(273, no_table), page.tags.get(279, no_table)
    per_plane = -(-rows // strip_rows) if strip_rows else 0
    if not per_plane or len(offsets) != per_plane * samples or len(byte_counts) != len(offsets):
        raise UnreadableImageError(
            f"{path.name} is a damaged TIFF: its strip table ({len(offsets)} offset(s), "
            f"{len(byte_counts)} size(s), {strip_rows} row(s) a strip) does not fit a "
            f"{columns} x {rows} image of {samples} planes.")
    # Colour as OpenCV gives it, blue first: RGB's planes 0 and 2 trade places.
    channels = [2, 1, 0, *range(3, samples)] if page.photometric == 2 and samples >= 3 \
        else list(range(samples))
    pixels = np.empty((rows, columns, samples), dtype=stored.newbyteorder("="))
    for strip, (offset, byte_count) in enumerate(zip(offsets.tolist(), byte_counts.tolist(),
                                                     strict=True)):
        plane, first = divmod(strip, per_plane)
        first *= strip_rows
        count = min(strip_rows, rows - first) * columns
        size = count * stored.itemsize
        if byte_count < size:
            raise UnreadableImageError(
                f"{path.name} is a damaged TIFF: strip {strip + 1} holds {byte_count:,} "
                f"bytes where its rows need {size:,}.")
        if offset + size > len(data):
            raise TruncatedImageError(
                f"{path.name} is a truncated TIFF: its image data runs to byte "
                f"{offset + size:,}, and the file ends at {len(data):,}.")
        pixels[first:first + count // columns, :, channels[plane]] = np.frombuffer(
            data, dtype=stored, count=count, offset=offset).reshape(-1, columns)
    turn = _ORIENTATIONS.get(page.orientation, _ORIENTATIONS[1])[0]
    return np.ascontiguousarray(turn(pixels))


def _planar_layout_unsupported(page: _TiffPage, bits: tuple[int, ...],
                               formats: tuple[int, ...]) -> str | None:
    """Why _separate_planes cannot read ``page`` (words to follow "at 16 bits per sample,"),
    or None when it is stored as it reads: uncompressed strips of one sample type."""
    compression, predictor = page.value(259, 1), page.value(317, 1)
    reasons = (
        (len(set(zip(bits, formats, strict=True))) != 1,
         "with samples of different sizes or types"),
        (page.photometric not in (0, 1, 2),  # MinIsWhite, MinIsBlack, RGB
         f"in a colour space other than grey or RGB (PhotometricInterpretation "
         f"{page.photometric})"),
        (page.samples > 4, f"with {page.samples} samples a pixel"),
        (322 in page.tags, "in tiles"),  # TileWidth
        (compression != 1, f"compressed (TIFF Compression {compression})"),
        (predictor != 1, f"with a predictor (TIFF Predictor {predictor})"),
        (page.value(266, 1) != 1, "with its bits in reversed order (TIFF FillOrder 2)"),
    )
    return next((why for unsupported, why in reasons if unsupported), None)


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


def _tiff_directories(data: bytes, limit: int) -> list[dict[int, np.ndarray]]:
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
    directories = _tiff_directories(exif, 1) if exif[:2] in (b"II", b"MM") else []
    value = int(directories[0][274][0]) if directories and 274 in directories[0] else None
    return value if value in _ORIENTATIONS else None


def _upright(pixels: np.ndarray, orientation: int | None, notes: dict[str, str]
             ) -> np.ndarray:
    """``pixels`` turned as the EXIF Orientation says viewers show them (1: as stored)."""
    if orientation is None or orientation == 1:
        return pixels
    notes["orientation"] = _orientation_note("EXIF", orientation)
    return np.ascontiguousarray(_ORIENTATIONS[orientation][0](pixels))


def _orientation_note(kind: str, orientation: int) -> str:
    return f"{kind} Orientation {orientation} applied: {_ORIENTATIONS[orientation][1]}"


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
