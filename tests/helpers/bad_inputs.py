"""A corpus of bad inputs, one file per kind, with the reason code each must fail with.

``LEGEND`` is the table: kind -> expected ``ErrorCode`` and how the file is made. Builders
start from a small valid mammogram (DICOM or raster) and break one thing, so each kind tests
exactly the check it names. ``write_kind`` writes one kind at a path; the caller decides when
(before ``mammo submit``, or over a file that was already queued, so the worker meets it).

Kinds marked ``needs_unprivileged_reader`` only fail for a process that cannot bypass file
permissions: run the reader without CAP_DAC_OVERRIDE (``setpriv``) when testing as root.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian

from shared.enums import ErrorCode, Laterality, View
from shared.synthetic import synth_mammogram, write_dicom, write_truncated_copy
from tests.helpers.dicom_edit import rewrite_dicom

SIZE = (96, 80)
# A transfer syntax no installed decoder knows, as a vendor's private compression.
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.8.498.999"
# The worker under test runs with this pixel limit, so "too large" costs kilobytes, not GB.
MAX_PIXELS = 200_000


@dataclass(frozen=True)
class BadKind:
    name: str
    expected: ErrorCode
    what: str
    write: Callable[[Path, int], None]  # (path, seed) -> writes the file at path
    needs_unprivileged_reader: bool = False

    @property
    def suffix(self) -> str:
        family = self.name.split("_", 1)[0]
        return {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "pgm": ".pgm"}.get(family, ".dcm")


def _pixels(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return synth_mammogram(np.random.default_rng(seed), size=size, laterality=Laterality.LEFT)


def good_dicom(path: Path, seed: int, **pixels_kw: tuple[int, int]) -> Path:
    """A valid small MG For Presentation DICOM with UIDs unique to ``seed``."""
    root = f"1.2.826.0.1.3680043.9.7799.{seed}"
    return write_dicom(path, _pixels(seed, **pixels_kw), study_uid=root, sop_uid=f"{root}.1",
                       laterality=Laterality.LEFT, view=View.CC)


def good_png(path: Path, seed: int) -> Path:
    """A valid 16-bit PNG (written whatever ``path``'s suffix is)."""
    ok, data = cv2.imencode(".png", (_pixels(seed) << 4).astype(np.uint16))
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _dicom_with(**changes: object) -> Callable[[Path, int], None]:
    """A valid DICOM with header elements set (or deleted, for None)."""
    def write(path: Path, seed: int) -> None:
        rewrite_dicom(good_dicom(path, seed), **changes)
    return write


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _bytes(make: Callable[[int], bytes]) -> Callable[[Path, int], None]:
    def write(path: Path, seed: int) -> None:
        path.write_bytes(make(seed))
    return write


def _cut(build: Callable[[Path, int], object], keep: Callable[[bytes], bytes]
         ) -> Callable[[Path, int], None]:
    """Build a valid file, then keep only part of (or damage) its bytes."""
    def write(path: Path, seed: int) -> None:
        build(path, seed)
        path.write_bytes(keep(path.read_bytes()))
    return write


def _raster(ext: str, pixels: Callable[[int], np.ndarray]) -> Callable[[int], bytes]:
    def make(seed: int) -> bytes:
        ok, data = cv2.imencode(ext, pixels(seed))
        assert ok
        return bytes(data.tobytes())
    return make


def _grey8(seed: int) -> np.ndarray:
    return (_pixels(seed) >> 4).astype(np.uint8)


def _truncated_dicom(path: Path, seed: int) -> None:
    full = good_dicom(path.with_name(path.name + ".full"), seed)
    write_truncated_copy(full, path)
    full.unlink()


def _unsupported_syntax(path: Path, seed: int) -> None:
    ds = pydicom.dcmread(good_dicom(path, seed))
    ds.file_meta.TransferSyntaxUID = PRIVATE_SYNTAX
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)


def _rgb_dicom(path: Path, seed: int) -> None:
    ds = pydicom.dcmread(good_dicom(path, seed))
    grey = _grey8(seed)  # in colour: grey stored as RGB is merged, not refused
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=2)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)


def deflated_dicom(path: Path, seed: int, *, pixel_bytes: int | None = None,
                   private_bytes: int = 0) -> Path:
    """A good DICOM stored as Deflated Explicit VR Little Endian, its dataset deflated as a
    stream: by default with its true pixels; with ``pixel_bytes``, a Pixel Data element of
    that many zero bytes instead, and ``private_bytes`` zeros in a private element before
    it. Zeros deflate about 1000:1, so a small file inflates to whatever is asked."""
    ds = pydicom.dcmread(good_dicom(path, seed))
    pixels = ds.PixelData
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate, PS3.5 A.5
    parts = [deflater.compress(_explicit_little(ds, pydicom.filewriter.write_dataset))]
    if private_bytes:
        parts.append(deflater.compress(struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8)
                                       + b"BOMBTEST"))  # the private creator of (0009,10xx)
        parts += _long_element(deflater, 0x0009, 0x1000, b"OB", private_bytes)
    parts += _long_element(deflater, 0x7FE0, 0x0010, b"OW",
                           len(pixels) if pixel_bytes is None else pixel_bytes,
                           pixels if pixel_bytes is None else b"")
    parts.append(deflater.flush())
    meta = _explicit_little(ds.file_meta, partial(pydicom.filewriter.write_file_meta_info,
                                                  enforce_standard=True))
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + b"".join(parts))
    return path


def _explicit_little(ds: Dataset, write: Callable[[DicomBytesIO, Dataset], object]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write(buffer, ds)
    return buffer.getvalue()


def _long_element(deflater: zlib._Compress, group: int, element: int, vr: bytes, length: int,
                  value: bytes = b"") -> list[bytes]:
    """An element with a 4-byte length, deflated; its value, or ``length`` zeros, written a
    block at a time so a gigabyte of zeros never exists uncompressed."""
    parts = [deflater.compress(struct.pack("<HH2sHI", group, element, vr, 0, length))]
    if value:
        return [*parts, deflater.compress(value)]
    zeros = bytes(min(length, 16 << 20))
    for start in range(0, length, len(zeros) or 1):
        parts.append(deflater.compress(zeros[:length - start]))
    return parts


def _deflate_bomb(path: Path, seed: int) -> None:
    # Twice the reader's default allowance for elements besides the pixels (64 MiB).
    deflated_dicom(path, seed, pixel_bytes=128 << 20)


def _constant_dicom(path: Path, seed: int) -> None:
    root = f"1.2.826.0.1.3680043.9.7798.{seed}"
    write_dicom(path, np.full(SIZE, 900, np.uint16), study_uid=root, sop_uid=f"{root}.1",
                laterality=Laterality.LEFT, view=View.CC)


def _non_image(sop_class: str, modality: str) -> Callable[[Path, int], None]:
    """A Part 10 file of a non-image class (a report, a presentation state): no pixels."""
    def write(path: Path, seed: int) -> None:
        ds = FileDataset(str(path), {}, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7797.{seed}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality, ds.PatientID = modality, ""
        ds.save_as(path, enforce_file_format=True)
    return write


def _dicomdir(path: Path, seed: int) -> None:
    """The DICOMDIR of a CD holding one good image: the media index, not the image."""
    with tempfile.TemporaryDirectory() as folder:
        image = pydicom.dcmread(good_dicom(Path(folder) / "image.dcm", seed))
        image.PatientID, image.StudyID = f"ANON-{seed}", "1"  # the index needs both
        media = FileSet()
        media.add(image)
        media.write(Path(folder) / "media")
        path.write_bytes((Path(folder) / "media" / "DICOMDIR").read_bytes())


def _png_bad_crc(data: bytes) -> bytes:
    """Flip bytes inside the first IDAT chunk: the zlib stream no longer inflates."""
    at = data.index(b"IDAT") + 4 + 20
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + 16]) + data[at + 16:]


def _jpeg_without_frame(data: bytes) -> bytes:
    """SOI, the JFIF segment, then EOI: a JPEG with no frame (no SOF, no scan) at all."""
    app0_length = struct.unpack(">H", data[4:6])[0]
    return data[:4 + app0_length] + b"\xff\xd9"


def _drop_a_block(data: bytes) -> bytes:
    """An eighth cut out half-way through: every marker intact, the scan data short."""
    at = len(data) // 2
    return data[:at] + data[at + len(data) // 8:]


def _tiff_garbage(seed: int) -> bytes:
    """A little-endian TIFF signature whose first IFD offset points past the end."""
    return b"II*\x00" + struct.pack("<I", 1 << 30) + os.urandom(200 + seed % 7)


def _tiff_two_views(path: Path, seed: int) -> None:
    """Two full-size 16-bit views in one TIFF: OpenCV alone would decode only the first."""
    views = [(_pixels(seed) << 4).astype(np.uint16), (_pixels(seed + 1) << 4).astype(np.uint16)]
    assert cv2.imwritemulti(str(path), views)


def _disc_mask(seed: int) -> np.ndarray:
    """A white disc on black, as a segmentation or ROI mask is drawn: smooth, breast-shaped."""
    rows, columns = np.indices(SIZE)
    inside = (rows - SIZE[0] // 2) ** 2 + (columns - SIZE[1] // 3) ** 2 < (25 + seed % 5) ** 2
    return inside.astype(np.uint8) * 255


def _tiff_1bit_mask(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_disc_mask(seed)).convert("1").save(buffer, format="TIFF")
    return buffer.getvalue()


def _png_without_idat(seed: int) -> bytes:
    """A PNG signature and header, then IEND: an image with no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 80 + seed % 3, 96, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _dangling_symlink(path: Path, seed: int) -> None:
    path.symlink_to(path.with_name(f"never-written-{seed}.dcm"))


def _directory(path: Path, seed: int) -> None:
    path.mkdir()
    good_dicom(path / "inside.dcm", seed)  # a folder full of images is still not an image


def _unreadable(path: Path, seed: int) -> None:
    good_dicom(path, seed)
    path.chmod(0)


LEGEND: tuple[BadKind, ...] = (
    BadKind("zero_bytes", ErrorCode.UNREADABLE, "an empty file named .dcm",
            _bytes(lambda _s: b"")),
    BadKind("random_bytes", ErrorCode.NOT_DICOM_OR_IMAGE, "4 kB of random bytes named .dcm",
            _bytes(lambda s: np.random.default_rng(s).bytes(4096))),
    BadKind("text_as_dcm", ErrorCode.NOT_DICOM_OR_IMAGE, "a CSV patient list named .dcm",
            _bytes(lambda s: b"patient list\nname,id\n" * (20 + s % 3))),
    BadKind("dicom_preamble_only", ErrorCode.UNREADABLE, "128-byte preamble + DICM, nothing else",
            _bytes(lambda s: bytes([s % 256]) * 128 + b"DICM")),
    BadKind("dicom_cut_in_header", ErrorCode.UNREADABLE, "a DICOM cut 200 bytes in",
            _cut(good_dicom, lambda b: b[:200])),
    BadKind("dicom_truncated_pixels", ErrorCode.TRUNCATED, "Pixel Data cut to half its length",
            _truncated_dicom),
    BadKind("dicom_for_processing_class", ErrorCode.FOR_PROCESSING,
            "SOP Class: Digital Mammography For Processing",
            _dicom_with(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1")),
    BadKind("dicom_for_processing_intent", ErrorCode.FOR_PROCESSING,
            "Presentation Intent Type FOR PROCESSING",
            _dicom_with(PresentationIntentType="FOR PROCESSING")),
    BadKind("dicom_ct", ErrorCode.NOT_MAMMOGRAPHY, "Modality CT, CT Image Storage",
            _dicom_with(Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")),
    BadKind("dicom_ultrasound", ErrorCode.NOT_MAMMOGRAPHY, "Modality US, Secondary Capture",
            _dicom_with(Modality="US", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")),
    BadKind("dicom_dx_chest", ErrorCode.NOT_MAMMOGRAPHY,
            "Modality DX, Body Part Examined CHEST (a chest radiograph)",
            _dicom_with(Modality="DX", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1",
                        BodyPartExamined="CHEST")),
    BadKind("dicom_specimen", ErrorCode.NOT_MAMMOGRAPHY,
            "View Code Sequence: tissue specimen from breast (a specimen radiograph)",
            _dicom_with(ViewPosition=None, ViewCodeSequence=[_code(
                "127457009", "SCT", "tissue specimen from breast")])),
    BadKind("dicom_multiframe", ErrorCode.NOT_MAMMOGRAPHY,
            "Number of Frames 2 (tomosynthesis-like)", _dicom_with(NumberOfFrames=2)),
    BadKind("dicom_no_rows", ErrorCode.NOT_MAMMOGRAPHY, "Rows and Columns missing",
            _dicom_with(Rows=None, Columns=None)),
    BadKind("dicom_dicomdir", ErrorCode.NOT_MAMMOGRAPHY, "a DICOMDIR (media index) named .dcm",
            _dicomdir),
    BadKind("dicom_cad_report", ErrorCode.NOT_MAMMOGRAPHY, "a Mammography CAD SR (no pixels)",
            _non_image("1.2.840.10008.5.1.4.1.1.88.50", "SR")),
    BadKind("dicom_presentation_state", ErrorCode.NOT_MAMMOGRAPHY,
            "a Grayscale Softcopy Presentation State", _non_image("1.2.840.10008.5.1.4.1.1.11.1",
                                                                  "PR")),
    BadKind("dicom_key_objects", ErrorCode.NOT_MAMMOGRAPHY, "a Key Object Selection document",
            _non_image("1.2.840.10008.5.1.4.1.1.88.59", "KO")),
    BadKind("dicom_no_pixel_data", ErrorCode.MISSING_PIXEL_DATA, "Pixel Data element removed",
            _dicom_with(PixelData=None)),
    BadKind("dicom_huge_rows_columns", ErrorCode.TOO_LARGE,
            "Rows/Columns 65535 x 65535 (8.6 GB if allocated)",
            _dicom_with(Rows=65535, Columns=65535)),
    BadKind("dicom_deflate_bomb", ErrorCode.TOO_LARGE,
            "a 130 kB deflated DICOM declaring 96 x 80 whose Pixel Data inflates to 128 MiB",
            _deflate_bomb),
    BadKind("dicom_unsupported_syntax", ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
            "a vendor's private compression (transfer syntax UID)", _unsupported_syntax),
    BadKind("dicom_rgb", ErrorCode.UNEXPECTED_CHANNELS, "Photometric Interpretation RGB, in colour",
            _rgb_dicom),
    BadKind("dicom_palette", ErrorCode.UNEXPECTED_CHANNELS, "PALETTE COLOR photometric",
            _dicom_with(PhotometricInterpretation="PALETTE COLOR")),
    BadKind("dicom_constant_pixels", ErrorCode.EMPTY_IMAGE, "every pixel 900", _constant_dicom),
    BadKind("dicom_zero_window_width", ErrorCode.UNREADABLE, "Window Width 0 (undefined VOI)",
            _dicom_with(WindowWidth=0)),
    BadKind("png_truncated", ErrorCode.TRUNCATED, "a 16-bit PNG cut in half",
            _cut(good_png, lambda b: b[:len(b) // 2])),
    BadKind("png_corrupt_idat", ErrorCode.UNREADABLE, "a PNG with scrambled IDAT bytes",
            _cut(good_png, _png_bad_crc)),
    BadKind("png_no_idat", ErrorCode.UNREADABLE, "PNG header and IEND, no pixel data",
            _bytes(_png_without_idat)),
    BadKind("png_constant_16bit", ErrorCode.EMPTY_IMAGE, "a 16-bit PNG, every pixel equal",
            _bytes(_raster(".png", lambda s: np.full(SIZE, 1000 + s, np.uint16)))),
    BadKind("png_colour", ErrorCode.UNEXPECTED_CHANNELS, "a PNG with real colour",
            _bytes(_raster(".png", lambda s: np.random.default_rng(s).integers(
                0, 255, (*SIZE, 3), dtype=np.uint8)))),
    BadKind("png_random_noise", ErrorCode.NOT_MAMMOGRAPHY, "a 16-bit PNG of random noise",
            _bytes(_raster(".png", lambda s: np.random.default_rng(s).integers(
                0, 65536, SIZE, dtype=np.uint16)))),
    BadKind("png_mask", ErrorCode.NOT_MAMMOGRAPHY, "an 8-bit PNG of a white disc on black (a mask)",
            _bytes(_raster(".png", _disc_mask))),
    BadKind("png_too_large", ErrorCode.TOO_LARGE, f"a PNG above {MAX_PIXELS:,} pixels",
            _bytes(_raster(".png", lambda s: np.full((600, 400), s % 200, np.uint8)))),
    BadKind("jpeg_truncated", ErrorCode.TRUNCATED, "a JPEG cut in half (no EOI)",
            _bytes(lambda s: _raster(".jpg", _grey8)(s)[:1200])),
    BadKind("jpeg_no_frame", ErrorCode.UNREADABLE, "a JPEG with SOI, JFIF and EOI only",
            _bytes(lambda s: _jpeg_without_frame(_raster(".jpg", _grey8)(s)))),
    BadKind("jpeg_lost_block", ErrorCode.UNREADABLE, "a JPEG missing a block of scan data",
            _bytes(lambda s: _drop_a_block(_raster(".jpg", _grey8)(s)))),
    BadKind("tiff_garbage", ErrorCode.UNREADABLE, "TIFF signature, IFD offset past the end",
            _bytes(_tiff_garbage)),
    BadKind("tiff_truncated", ErrorCode.UNREADABLE, "a 16-bit TIFF cut in half",
            _bytes(lambda s: _raster(".tiff", lambda t: (_pixels(t) << 4).astype(np.uint16))(s)
                   [:8000])),
    BadKind("tiff_multipage", ErrorCode.NOT_MAMMOGRAPHY, "a TIFF holding two full-size views",
            _tiff_two_views),
    BadKind("tiff_all_nan", ErrorCode.UNREADABLE, "a float TIFF whose every pixel is NaN",
            _bytes(_raster(".tiff", lambda _s: np.full(SIZE, np.nan, np.float32)))),
    BadKind("tiff_1bit_mask", ErrorCode.NOT_MAMMOGRAPHY, "a 1-bit TIFF of a white disc (a mask)",
            _bytes(_tiff_1bit_mask)),
    BadKind("pgm_truncated", ErrorCode.TRUNCATED, "a binary PGM missing half its pixels",
            _bytes(lambda s: b"P5\n80 96\n4095\n" + _pixels(s).astype(">u2").tobytes()[:7000])),
    BadKind("dangling_symlink", ErrorCode.MISSING_FILE, "a symbolic link to a file never written",
            _dangling_symlink),
    BadKind("directory_named_dcm", ErrorCode.UNREADABLE, "a folder named .dcm", _directory),
    BadKind("permission_denied", ErrorCode.UNREADABLE, "a valid DICOM with mode 000",
            _unreadable, needs_unprivileged_reader=True),
    BadKind("deleted_after_submit", ErrorCode.MISSING_FILE, "removed before the worker reads it",
            lambda path, _seed: None),
)


def write_kind(kind: BadKind, path: Path, seed: int) -> Path:
    """Replace whatever is at ``path`` by the bad file of ``kind``."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    kind.write(path, seed)
    return path


def legend_markdown() -> str:
    rows = [f"| `{k.name}` | {k.what} | `{k.expected.value}` |" for k in LEGEND]
    return "\n".join(["| kind | file | expected reason |", "|---|---|---|", *rows])
