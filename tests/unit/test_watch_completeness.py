"""A half-written PGM or TIFF is not complete: the drop folder waits for the rest.

Only DICOM, PNG and JPEG were checked; any other file of 132 bytes or more counted as
complete. A PGM or TIFF written in chunks, closed after each, was queued at every close:
each version an image of its own (its identity is its bytes), all but the last failed
``truncated`` or ``unreadable`` beside the complete one. A binary PGM is complete when it
holds width x height samples after its header; a TIFF when its directories and every strip
or tile they point to lie within the file. A damaged header is "complete": the reader
refuses the file at once with the reason, instead of after the grace period.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from producer.watch.completeness import is_complete
from producer.watch.stability import StabilityTracker
from shared.errors import InputError
from shared.imaging.readers import decode
from shared.synthetic import synth_mammogram

PIXELS = (synth_mammogram(np.random.default_rng(11), size=(96, 80)) >> 4).astype(np.uint8)
WIDE = PIXELS.astype(np.uint16) << 4


def _pgm8() -> bytes:
    return b"P5\n80 96\n255\n" + PIXELS.tobytes()


def _pgm16() -> bytes:
    # A comment in the header, and 16-bit samples (2 bytes each, most significant first).
    return b"P5\n# from the scanner\n80 96\n4095\n" + WIDE.astype(">u2").tobytes()


def _opencv_tiff() -> bytes:
    ok, data = cv2.imencode(".tiff", WIDE)  # libtiff: pixels first, the directory last
    assert ok
    return data.tobytes()


def _pil_tiff(**options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, format="TIFF", **options)
    return buffer.getvalue()


def _built_tiff(*, order: str = "<", big: bool = False, tiled: bool = False) -> bytes:
    """An uncompressed 16-bit TIFF written by hand: its directory first, then the offset and
    byte-count tables, then the strips (one per 16 rows) or 16 x 16 tiles."""
    rows, columns = WIDE.shape
    samples = WIDE.astype(order + "u2")
    if tiled:
        blocks = [np.ascontiguousarray(samples[r:r + 16, c:c + 16]).tobytes()
                  for r in range(0, rows, 16) for c in range(0, columns, 16)]
        layout = [(322, 3, [16]), (323, 3, [16])]
        offsets_tag, counts_tag = 324, 325
    else:
        blocks = [samples[r:r + 16].tobytes() for r in range(0, rows, 16)]
        layout = [(278, 3, [16])]
        offsets_tag, counts_tag = 273, 279
    count_format, entry_format, pointer, first = (
        ("Q", "HHQ", "Q", 16) if big else ("H", "HHI", "I", 8))
    kind = 16 if big else 4  # LONG8 or LONG offsets
    entries = 8 + len(layout)
    width = struct.calcsize("<" + pointer)
    table_at = (first + struct.calcsize("<" + count_format)
                + entries * struct.calcsize("<" + entry_format + pointer) + width)
    data_at = table_at + 2 * len(blocks) * width
    offsets = list(np.cumsum([data_at] + [len(b) for b in blocks[:-1]]))
    tags = sorted([(256, 3, [columns]), (257, 3, [rows]), (258, 3, [16]), (259, 3, [1]),
                   (262, 3, [1]), (277, 3, [1]), *layout,
                   (offsets_tag, kind, offsets), (counts_tag, kind, [len(b) for b in blocks])])
    out = (b"II" if order == "<" else b"MM") + (
        struct.pack(order + "HHHQ", 43, 8, 0, first) if big else struct.pack(order + "HI", 42, 8))
    out += struct.pack(order + count_format, len(tags))
    tables = b""
    for tag, field_type, values in tags:
        if len(values) == 1:  # held in the entry, left-justified
            value = struct.pack(order + ("H" if field_type == 3 else "Q" if big else "I"),
                                int(values[0])).ljust(width, b"\0")
        else:
            value = struct.pack(order + pointer, table_at + len(tables))
            tables += struct.pack(f"{order}{len(values)}{'Q' if big else 'I'}",
                                  *map(int, values))
        out += struct.pack(order + entry_format, tag, field_type, len(values)) + value
    out += struct.pack(order + pointer, 0) + tables
    assert len(out) == data_at
    return out + b"".join(blocks)


FILES = {
    "pgm 8-bit": _pgm8, "pgm 16-bit": _pgm16, "tiff by OpenCV": _opencv_tiff,
    "tiff by PIL": _pil_tiff, "tiff by PIL, deflated": lambda: _pil_tiff(
        compression="tiff_deflate"),
    "tiff and preview": lambda: _pil_tiff(save_all=True,
                                          append_images=[Image.fromarray(PIXELS[::4, ::4])]),
    "tiff, big-endian strips": lambda: _built_tiff(order=">"),
    "tiff, tiles": lambda: _built_tiff(tiled=True),
    "bigtiff, tiles": lambda: _built_tiff(big=True, tiled=True),
}


@pytest.mark.parametrize("name", list(FILES))
def test_every_cut_of_a_pgm_or_tiff_is_incomplete_and_the_whole_file_complete(
        tmp_path: Path, name: str) -> None:
    data = FILES[name]()
    path = tmp_path / "f"
    path.write_bytes(data)
    assert is_complete(path)
    assert decode(path, max_pixels=10**6).pixels.shape == PIXELS.shape  # its reader takes it
    # PIL pads its last directory with zeros: a file without the padding is whole.
    end = len(data.rstrip(b"\0")) if name == "tiff and preview" else len(data)
    for cut in [*range(132, end, 97), end - 1]:
        path.write_bytes(data[:cut])
        assert not is_complete(path), cut


def test_hand_built_tiffs_decode_to_their_pixels() -> None:
    # The test's own files are TIFFs libtiff reads, so what their cuts show holds.
    for name in ("tiff, big-endian strips", "tiff, tiles", "bigtiff, tiles"):
        decoded = cv2.imdecode(np.frombuffer(FILES[name](), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and np.array_equal(decoded, WIDE), name


def test_a_tiff_being_written_by_libtiff_is_incomplete(tmp_path: Path) -> None:
    # libtiff writes the first directory's offset when it closes the file; before, it is 0.
    data = bytearray(_opencv_tiff())
    data[4:8] = b"\0\0\0\0"
    path = tmp_path / "open.tif"
    path.write_bytes(bytes(data))
    assert not is_complete(path)


def test_a_tiff_whose_directory_is_still_zeros_is_incomplete(tmp_path: Path) -> None:
    # A copy tool that sets the final size first: the directory at the end not yet written.
    data = _opencv_tiff()
    directory = struct.unpack("<I", data[4:8])[0]
    path = tmp_path / "preallocated.tif"
    path.write_bytes(data[:directory] + bytes(len(data) - directory))
    assert not is_complete(path)


@pytest.mark.parametrize("damaged", [
    b"P5\n0 96\n255\n" + bytes(200),  # no width
    b"P5\nwidth height\n" + bytes(200),  # no numbers
    b"MM\x00+\x00\x04\x00\x00" + bytes(200),  # BigTIFF of 4-byte offsets
    b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 60000) + bytes(200),  # 60,000 tags
])
def test_a_damaged_header_is_complete_so_that_the_reader_refuses_it_at_once(
        tmp_path: Path, damaged: bytes) -> None:
    path = tmp_path / "damaged"
    path.write_bytes(damaged)
    assert is_complete(path)
    with pytest.raises(InputError):
        decode(path, max_pixels=10**6)


def test_a_plain_pgm_is_left_to_the_quiet_period(tmp_path: Path) -> None:
    # Its values are text: how many bytes they take is unknown until they are parsed.
    path = tmp_path / "plain.pgm"
    path.write_bytes(b"P2\n80 96\n255\n" + b" ".join(b"%d" % v for v in PIXELS.ravel()[:100]))
    assert is_complete(path)


def test_a_pgm_closed_half_written_waits_for_the_rest(tmp_path: Path) -> None:
    # The probe's writer: a close after each chunk, the next chunk a quiet period later.
    now = [1000.0]
    tracker = StabilityTracker(quiet_s=2.0, grace_s=120.0, clock=lambda: now[0],
                               wall_clock=lambda: 0.0, close_events=True)
    data, path = _pgm8(), tmp_path / "chunked.pgm"
    path.write_bytes(data[:len(data) // 2])
    tracker.note(path, closed=True)
    for _ in range(3):
        now[0] += 3.0
        assert tracker.poll().ready == []
    path.write_bytes(data)
    tracker.note(path, closed=True)
    assert tracker.poll().ready == [path]
