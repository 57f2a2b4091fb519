"""TIFF files, decoded by OpenCV (``RasterReader``) but for what it gets wrong.

OpenCV decodes only a TIFF's first page: the pages' sizes are read here, the largest page is
decoded, and a file of several full-size pages is refused. One layout OpenCV misreads is
decoded here: a TIFF whose samples of more than 8 bits are stored plane by plane
(PlanarConfiguration 2), which OpenCV reads as if interleaved; only its uncompressed strips
are read, anything else is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from shared.errors import NotAMammogramError, TruncatedImageError, UnreadableImageError
from shared.imaging.readers.raster import (
    IMREAD_FLAGS,
    ORIENTATIONS,
    Alpha,
    RasterReader,
    no_memory,
    tiff_directories,
)
from shared.imaging.types import DecodedImage

# At most this many TIFF pages are walked for their sizes (a loop of IFD offsets ends too).
_MAX_TIFF_PAGES = 1024
# A later TIFF page smaller than this share of the first in either dimension is a preview
# (thumbnail, pyramid level: at most half size); a larger one is another image.
_PREVIEW_SHARE = 0.6
# Samples of planes stored separately that are decoded here (OpenCV reads such pages as if
# their samples were interleaved unless they hold 8 bits a sample): (BitsPerSample,
# SampleFormat) -> numpy type code. The types OpenCV gives the same page stored interleaved.
_PLANAR_TYPES = {(16, 1): "u2", (16, 2): "i2", (32, 1): "u4", (32, 2): "i4", (32, 3): "f4",
                 (64, 3): "f8"}


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
        return orientation if orientation in ORIENTATIONS else None

    def inverted(self, data: bytes, pixels: np.ndarray) -> bool:
        # PhotometricInterpretation 0 (MinIsWhite): OpenCV inverts it only on its 8-bit path
        # (libtiff's RGBA reader, which also takes 1-4 bit images); 16-bit, 32-bit and float
        # pages come back as stored, dark where the film is clear.
        pages = _tiff_pages(data)
        page = pages[_main_page(pages)] if pages else None
        return page is not None and page.photometric == 0 and pixels.dtype != np.uint8

    def alpha(self, data: bytes, image: np.ndarray) -> Alpha:
        # ExtraSamples (338): 1 associated (premultiplied) alpha, 2 unassociated; 0 or none
        # is a sample of unspecified meaning, not opacity. OpenCV reads 8-bit pages through
        # libtiff's RGBA reader, which premultiplies unassociated alpha itself.
        pages = _tiff_pages(data)
        extra = pages[_main_page(pages)].value(338, 0) if pages else 0
        if extra not in (1, 2):
            return "none"
        return "premultiplied" if extra == 1 or image.dtype == np.uint8 else "straight"

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
    """One image file directory: the tags ``tiff_directories`` reads, each all its values."""

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
    for tags in tiff_directories(data, _MAX_TIFF_PAGES):
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
    turn = ORIENTATIONS.get(page.orientation, ORIENTATIONS[1])[0]
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
        ok, page = cv2.imreadmulti(str(path), start=index, count=1, flags=IMREAD_FLAGS)
    except cv2.error as exc:
        no_memory(exc)
        return None
    return page[0] if ok and page else None


TIFF = TiffReader()

__all__ = ["TIFF", "TiffReader"]
