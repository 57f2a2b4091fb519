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
from typing import Literal

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
# How the last channel of a grey+alpha or RGBA array holds opacity: "straight" (PNG's alpha,
# TIFF's unassociated alpha), "premultiplied" (the colour already composited onto black: TIFF's
# associated alpha, and what OpenCV makes of any 8-bit TIFF alpha), or "none" (a TIFF extra
# sample of unspecified meaning, which the TIFF standard says is not part of the picture).
Alpha = Literal["straight", "premultiplied", "none"]
# Partly transparent pixels on more than this share of the visible ones are refused: the
# anti-aliased rim of a cut-out background is a thin band (well under 1 %), while a picture
# shown through partial opacity has no stated grey value, only one that depends on what it
# is shown over, and the breast itself would be scored on that guess.
_PARTLY_TRANSPARENT_SHARE = 0.10
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
# PlanarConfiguration (284), Predictor (317), TileWidth (322), ExtraSamples (338),
# SampleFormat (339).
_TIFF_TAGS_READ = frozenset({256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 284, 317,
                             322, 338, 339})
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
        invert = self.inverted(data, image)
        pixels, notes = to_grayscale(image, path, alpha=self.alpha(data, image),
                                     white_is_zero=invert)
        # A header the cheap size check could not parse is caught once decoded.
        check_pixel_count(path, pixels.shape[0], pixels.shape[1], max_pixels)
        pixels = _upright(pixels, self.orientation(data), notes)
        applied = self.applied_orientation(data)
        if applied is not None and applied != 1:
            notes["orientation"] = _orientation_note(self.format_name.upper(), applied)
        low, high, from_pixels = self.value_range(data, pixels)
        if from_pixels:
            notes["range"] = f"value range taken from the pixels: {low:g} to {high:g}"
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
            no_memory(exc)
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

    def alpha(self, data: bytes, image: np.ndarray) -> Alpha:
        """How the last channel of a decoded 2- or 4-channel array holds opacity (see
        ``Alpha``); the default suits PNG, whose alpha is always straight."""
        return "straight"

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
        for kind, body in _png_chunks(data):
            if kind == b"eXIf":
                return _exif_orientation(body)
        return None

    def decode_pixels(self, data: bytes, path: Path) -> np.ndarray | None:
        """OpenCV's array, with a grey PNG's transparency as a second channel: OpenCV
        returns grey+alpha (colour type 4) as BGRA, which would read as grey stored as
        colour, and drops the transparent grey value a tRNS chunk names for plain grey
        (colour type 0), which would leave a background made transparent scored as
        stored (white, say)."""
        decoded = super().decode_pixels(data, path)
        if decoded is None or len(data) < 26:
            return decoded
        depth, colour_type = data[24], data[25]
        if colour_type == 4 and decoded.ndim == 3 and decoded.shape[2] == 4:
            return np.dstack((decoded[:, :, 0], decoded[:, :, 3]))
        if colour_type == 0 and decoded.ndim == 2:
            key = next((body for kind, body in _png_chunks(data) if kind == b"tRNS"), None)
            if key is not None and len(key) >= 2:
                # OpenCV widens 1-, 2- and 4-bit grey to 8 bits by scaling: so is the key.
                value = struct.unpack(">H", key[:2])[0]
                if depth < 8:
                    value = value * 255 // ((1 << depth) - 1)
                opaque = np.iinfo(decoded.dtype).max
                return np.dstack((decoded, np.where(decoded == value, 0, opaque)
                                  .astype(decoded.dtype)))
        return decoded


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


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each PNG chunk before IEND, as far as the bytes go."""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IEND":
            return
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


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


def to_grayscale(image: np.ndarray, path: Path, *, alpha: Alpha = "straight",
                 white_is_zero: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """One grey channel. Grey saved as RGB(A) is accepted; a true colour image is refused.

    Scanners and exporters often save grey as three equal channels; lossy JPEG then makes
    them differ by a few levels, so "grey" allows a small spread between channels.

    The last channel of a 2- or 4-channel array is opacity (see ``Alpha``). Fully opaque
    throughout, it says nothing and is dropped. Otherwise the picture is composited onto
    its darkest value, as a viewer on black shows it: a mammogram's background is black,
    whatever colour the exporter left under transparent pixels (white, often). Only the
    visible pixels are judged for colour. Nothing visible, or partly transparent pixels on
    more than a tenth of the visible ones, is refused.
    """
    if image.ndim == 2:
        return image, {}
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0], {}
    opacity = None
    if channels in (2, 4):
        if alpha != "none":
            opacity = _opacity(image[:, :, channels - 1])
        image = image[:, :, :channels - 1]
    visible = opacity > 0 if opacity is not None else None
    if visible is not None and not visible.any():
        raise UnexpectedChannelsError(
            f"{path.name} is fully transparent: its alpha channel hides every pixel, so "
            "there is no picture to classify. Export it again without transparency.")
    if image.shape[2] == 1:
        grey, notes = np.ascontiguousarray(image[:, :, 0]), {}
    else:
        colour = image[:, :, :3]
        spread = colour.max(axis=2).astype(np.float32) - colour.min(axis=2)
        top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) \
            else 1.0
        clearly = spread > _GREY_SPREAD * top
        coloured = float((clearly[visible] if visible is not None else clearly).mean())
        if coloured > _COLOURED_SHARE:
            raise UnexpectedChannelsError(
                f"{path.name} is a colour image ({channels} channels, {coloured:.0%} of "
                "pixels clearly coloured); a mammogram is grayscale."
            )
        grey = _merge_grey_channels(colour)
        notes = {"colour": "grey stored as colour channels, merged"}
    if opacity is None or visible is None:
        return grey, notes
    return _composited(grey, opacity, visible, alpha == "premultiplied", white_is_zero,
                       path, notes)


def _opacity(channel: np.ndarray) -> np.ndarray | None:
    """Opacity 0-1 per pixel from an alpha channel (integers: 0 to the type's maximum;
    floats: 0-1, not-a-number transparent), or None when every pixel is fully opaque."""
    if np.issubdtype(channel.dtype, np.integer):
        full = np.iinfo(channel.dtype).max
        if bool((channel == full).all()):
            return None
        return np.clip(channel.astype(np.float64) / full, 0.0, 1.0)
    opacity = np.clip(np.nan_to_num(channel.astype(np.float64), nan=0.0), 0.0, 1.0)
    return None if bool((opacity == 1.0).all()) else opacity


def _composited(grey: np.ndarray, opacity: np.ndarray, visible: np.ndarray,
                premultiplied: bool, white_is_zero: bool, path: Path,
                notes: dict[str, str]) -> tuple[np.ndarray, dict[str, str]]:
    """``grey`` as shown over its darkest value through ``opacity``, with a note saying
    how many pixels were transparent; refused when partial opacity covers the picture."""
    partly = visible & (opacity < 1.0)
    shown, transparent = int(visible.sum()), int(visible.size - visible.sum())
    share = int(partly.sum()) / shown
    if share > _PARTLY_TRANSPARENT_SHARE:
        raise UnexpectedChannelsError(
            f"{path.name} is partly transparent over {share:.0%} of its visible pixels (its "
            "alpha channel): their grey level depends on what the image is shown over, so "
            "the breast would be scored on a guess. Export it again without transparency "
            "(flattened onto black).")
    darkest = _darkest(grey, visible, white_is_zero)
    # Premultiplied colour already lies over black (0): only the backdrop changes.
    over = grey.astype(np.float64) * (1.0 if premultiplied else opacity) \
        + darkest * (1.0 - opacity)
    if np.issubdtype(grey.dtype, np.integer):
        info = np.iinfo(grey.dtype)
        over = np.clip(np.rint(over), info.min, info.max)
    notes = {**notes, "alpha": (
        f"transparency: {transparent:,} of {grey.size:,} pixels ({transparent / grey.size:.0%}) "
        f"fully transparent, {int(partly.sum()):,} partly: composited onto black, a "
        "mammogram's background, not onto the colour stored under them")}
    return over.astype(grey.dtype), notes


def _darkest(grey: np.ndarray, visible: np.ndarray, white_is_zero: bool) -> float:
    """The stored value that displays darkest, by the range ``RasterReader.value_range``
    gives: the type's for 8- and 16-bit unsigned pixels and floats in 0-1, else the
    visible pixels' own."""
    if grey.dtype in (np.uint8, np.uint16):
        low, high = 0.0, float(np.iinfo(grey.dtype).max)
    else:
        seen = grey[visible]
        seen = seen[np.isfinite(seen)] if seen.dtype.kind == "f" else seen
        low, high = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 1.0)
        if grey.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
    return high if white_is_zero else low


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


def no_memory(exc: cv2.error) -> None:
    """Raise OpenCV's "Insufficient memory" (StsNoMem) as the MemoryError it is: this host
    ran short (``base.host_fault``), the file is not damaged."""
    if exc.code == cv2.Error.StsNoMem:
        raise MemoryError(f"OpenCV: {exc.err}") from exc


__all__ = ["IMREAD_FLAGS", "JPEG", "ORIENTATIONS", "PNG", "Alpha", "RasterReader",
           "no_memory", "tiff_directories", "to_grayscale"]

