"""TIFF layouts OpenCV does not read as stored: samples kept plane by plane (PlanarConfiguration
2) at more than 8 bits, which it read as if interleaved (three shrunken copies of the breast
side by side, black below) and the pipeline then scored; and the Orientation tag, which it
applies without a word, so the input notes said nothing of the turn.

The files are written byte by byte here (``_tiff``), so that the tests need no TIFF writer
of their own and every tag is the one the test names.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from shared.enums import ErrorCode
from shared.errors import TruncatedImageError, UnreadableImageError
from shared.imaging.readers import decode
from shared.imaging.readers.tiff import TIFF
from shared.synthetic import synth_mammogram

BIG = 10**8
# numpy kind -> TIFF SampleFormat
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
# How viewers show stored pixels for each Orientation (the TIFF 6.0 definitions).
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
_TURNS = {2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
          5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed",
          8: "rotated 90 degrees anticlockwise"}


def _tiff(path: Path, planes: list[np.ndarray], *, planar: int, order: str = "<",
          rows_per_strip: int | None = None, photometric: int | None = None,
          orientation: int | None = None, deflate: bool = False,
          alpha: bool = False) -> Path:
    """A one-page TIFF of ``planes`` (one per sample, all of one dtype), stored interleaved
    (``planar`` 1) or plane by plane (2), in strips of ``rows_per_strip`` rows."""
    samples, (rows, columns) = len(planes), planes[0].shape
    dtype = planes[0].dtype.newbyteorder(order)
    step = rows_per_strip or rows
    if planar == 2:
        strips = [plane[top:top + step].astype(dtype).tobytes()
                  for plane in planes for top in range(0, rows, step)]
    else:
        chunky = np.dstack(planes).astype(dtype)
        strips = [chunky[top:top + step].tobytes() for top in range(0, rows, step)]
    if deflate:
        strips = [zlib.compress(strip) for strip in strips]
    offsets, at = [], 8
    for strip in strips:
        offsets.append(at)
        at += len(strip)
    entries: list[tuple[int, int, list[int]]] = [  # tag, type (3 SHORT, 4 LONG), values
        (256, 4, [columns]), (257, 4, [rows]), (258, 3, [dtype.itemsize * 8] * samples),
        (259, 3, [8 if deflate else 1]),
        (262, 3, [photometric if photometric is not None else 2 if samples >= 3 else 1]),
        (273, 4, offsets), (277, 3, [samples]), (278, 4, [step]),
        (279, 4, [len(strip) for strip in strips]), (284, 3, [planar]),
        (339, 3, [_SAMPLE_FORMAT[dtype.kind]] * samples),
    ]
    if orientation is not None:
        entries.append((274, 3, [orientation]))
    if alpha:
        entries.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
    entries.sort()
    extra, ifd_entries = b"", b""
    extra_at = at
    for tag, kind, values in entries:
        packed = struct.pack(f"{order}{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack(order + "I", extra_at + len(extra))
            extra += packed + b"\0" * (len(packed) % 2)
        ifd_entries += struct.pack(order + "HHI", tag, kind, len(values)) + field
    ifd_at = extra_at + len(extra)
    magic = b"II*\0" if order == "<" else b"MM\0*"
    path.write_bytes(magic + struct.pack(order + "I", ifd_at) + b"".join(strips) + extra
                     + struct.pack(order + "H", len(entries)) + ifd_entries
                     + struct.pack(order + "I", 0))
    return path


@pytest.fixture
def picture() -> np.ndarray:
    """A 12-bit synthetic mammogram, 128 x 96."""
    return synth_mammogram(np.random.default_rng(3), size=(128, 96), lesion=True)


def _as(picture: np.ndarray, dtype: str) -> np.ndarray:
    return {"uint16": (picture << 4).astype(np.uint16), "int16": (picture - 2048).astype(np.int16),
            "float32": (picture / 4095).astype(np.float32),
            "int32": picture.astype(np.int32) * 1000}[dtype]


@pytest.mark.parametrize("dtype, alpha, order, rows_per_strip", [
    ("uint16", False, "<", None),
    ("float32", False, "<", None),
    ("uint16", True, "<", None),    # 16-bit RGBA
    ("uint16", False, "<", 7),      # several strips a plane, the last one short
    ("int16", False, ">", 16),      # big-endian, signed
    ("int32", True, "<", 1),
])
def test_grey_stored_as_separate_colour_planes_is_read_as_the_picture(
        tmp_path: Path, picture: np.ndarray, dtype: str, alpha: bool, order: str,
        rows_per_strip: int | None) -> None:
    grey = _as(picture, dtype)
    planes = [grey] * 3 + ([np.full_like(grey, np.iinfo(grey.dtype).max if grey.dtype.kind
                                         != "f" else 1.0)] if alpha else [])
    path = _tiff(tmp_path / "planar.tif", planes, planar=2, order=order,
                 rows_per_strip=rows_per_strip, alpha=alpha)
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.dtype == grey.dtype and decoded.pixels.shape == grey.shape
    if grey.dtype.kind == "f":
        np.testing.assert_allclose(decoded.pixels, grey, rtol=1e-6)
    else:
        np.testing.assert_array_equal(decoded.pixels, grey)
    assert decoded.notes["colour"] == "grey stored as colour channels, merged"


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_separate_planes_come_back_as_the_same_page_stored_interleaved(
        tmp_path: Path, dtype: str) -> None:
    # Three different planes: each must land in its own channel, in OpenCV's (BGR) order,
    # exactly as OpenCV returns the same pixels written interleaved.
    rng = np.random.default_rng(9)
    planes = [_as(rng.integers(0, 4096, (40, 30)), dtype) for _ in range(3)]
    planar = _tiff(tmp_path / "planar.tif", planes, planar=2, rows_per_strip=6)
    chunky = _tiff(tmp_path / "chunky.tif", planes, planar=1)
    got = TIFF.decode_pixels(planar.read_bytes(), planar)
    assert got is not None
    np.testing.assert_array_equal(got, TIFF.decode_pixels(chunky.read_bytes(), chunky))
    np.testing.assert_array_equal(got, np.dstack(planes[::-1]))


def test_eight_bit_separate_planes_are_read_by_opencv_as_before(
        tmp_path: Path, picture: np.ndarray) -> None:
    # libtiff's RGBA reader, OpenCV's 8-bit path, takes planes stored separately.
    rng = np.random.default_rng(2)
    planes = [rng.integers(0, 256, (40, 30)).astype(np.uint8) for _ in range(3)]
    path = _tiff(tmp_path / "planar8.tif", planes, planar=2, rows_per_strip=9)
    np.testing.assert_array_equal(TIFF.decode_pixels(path.read_bytes(), path),
                                  np.dstack(planes[::-1]))
    grey = (picture >> 4).astype(np.uint8)
    path = _tiff(tmp_path / "grey8.tif", [grey] * 3, planar=2, deflate=True)
    np.testing.assert_array_equal(decode(path, max_pixels=BIG).pixels, grey)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_compressed_separate_planes_are_refused_not_scrambled(
        tmp_path: Path, picture: np.ndarray, dtype: str) -> None:
    grey = _as(picture, dtype)
    path = _tiff(tmp_path / "deflated.tif", [grey] * 3, planar=2, deflate=True)
    with pytest.raises(UnreadableImageError) as refused:
        decode(path, max_pixels=BIG)
    assert refused.value.code is ErrorCode.UNREADABLE
    bits = grey.dtype.itemsize * 8
    assert refused.value.message == (
        f"deflated.tif stores its colour planes separately (TIFF PlanarConfiguration 2) at "
        f"{bits} bits per sample, compressed (TIFF Compression 8), which this reader cannot "
        "decode reliably; export it as single-channel grey or as interleaved RGB.")


def test_separate_planes_past_the_end_of_the_file_are_truncation(
        tmp_path: Path, picture: np.ndarray) -> None:
    path = _tiff(tmp_path / "cut.tif", [_as(picture, "uint16")] * 3, planar=2)
    data = bytearray(path.read_bytes())
    # The directory is written last, so cutting the file would lose it: the last plane's
    # strip is said to start 100 bytes before the end instead.
    ifd = int.from_bytes(data[4:8], "little")
    entry = ifd + 2 + 12 * 5  # the sixth tag, in tag order: StripOffsets (273)
    assert data[entry:entry + 2] == (273).to_bytes(2, "little")
    table = int.from_bytes(data[entry + 8:entry + 12], "little")  # 3 offsets, stored apart
    data[table + 8:table + 12] = (len(data) - 100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedImageError, match=r"cut\.tif is a truncated TIFF") as refused:
        decode(path, max_pixels=BIG)
    assert refused.value.code is ErrorCode.TRUNCATED


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_and_noted_like_exif(
        tmp_path: Path, picture: np.ndarray, dtype: str, orientation: int) -> None:
    stored = (picture >> 4).astype(np.uint8) if dtype == "uint8" else _as(picture, dtype)
    path = _tiff(tmp_path / "turned.tif", [stored], planar=1, orientation=orientation)
    decoded = decode(path, max_pixels=BIG)
    np.testing.assert_array_equal(decoded.pixels, _UPRIGHT[orientation](stored))
    if orientation == 1:
        assert "orientation" not in decoded.notes
    else:
        assert decoded.notes["orientation"] == (
            f"TIFF Orientation {orientation} applied: {_TURNS[orientation]}")


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_separate_planes_are_turned_as_their_orientation_says(
        tmp_path: Path, picture: np.ndarray, orientation: int) -> None:
    grey = _as(picture, "uint16")
    path = _tiff(tmp_path / "turned.tif", [grey] * 3, planar=2, rows_per_strip=10,
                 orientation=orientation)
    decoded = decode(path, max_pixels=BIG)
    np.testing.assert_array_equal(decoded.pixels, _UPRIGHT[orientation](grey))
    assert decoded.notes["orientation"].startswith(f"TIFF Orientation {orientation} applied")
