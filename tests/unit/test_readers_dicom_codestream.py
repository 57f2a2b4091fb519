"""A compressed frame is held to its header before any decoder sees it: a decoder allocates
for the image its codestream declares, and a JPEG 2000 codestream declaring 60000 x 60000
pixels inside a 512 x 416 header took openjpeg 72 s and 21 GB before it failed (an OOM kill
on a smaller worker). Such a frame is refused from a few bytes of it, never decoded; every
normal compressed file still decodes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import UID

from shared.enums import ErrorCode, Laterality, View
from shared.errors import ImageTooLargeError, InputError, UnreadableImageError
from shared.imaging.readers import decode, dicom, gdcm_direct
from shared.imaging.readers.dicom_codestream import FrameHeader, Incomplete, frame_header
from shared.synthetic import synth_mammogram, write_compressed, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom

BIG = 10**8
ROWS, COLUMNS = 160, 128
# (syntax, bits stored): every compressed syntax whose codestream declares a size.
SYNTAXES = [
    (pydicom.uid.JPEGBaseline8Bit, 8),
    (pydicom.uid.JPEGExtended12Bit, 12),  # 12-bit: decoded by gdcm_direct, not pydicom
    (pydicom.uid.JPEGLossless, 12),
    (pydicom.uid.JPEGLosslessSV1, 12),
    (pydicom.uid.JPEGLSLossless, 12),
    (pydicom.uid.JPEG2000Lossless, 12),
    (pydicom.uid.HTJ2KLossless, 12),  # a JPEG 2000 codestream under the HTJ2K syntax
]
SYNTAX_IDS = [UID(syntax).keyword for syntax, _ in SYNTAXES]
# Where each kind of codestream states its size: (marker, offset of the size past it, how).
SOF_SIZE = ">HH"  # SOFn / SOF55: Y then X, after the length and the precision
SIZ_SIZE = ">II"  # SIZ: Xsiz then Ysiz, after Lsiz and Rsiz


def _size_at(frame: bytes) -> tuple[int, str, bool]:
    """(where the size starts, its struct format, whether columns come first)."""
    if frame.startswith(b"\xff\xd8"):
        sof = next(at for at in range(2, len(frame) - 1)
                   if frame[at] == 0xFF and frame[at + 1] in (0xC0, 0xC1, 0xC3, 0xF7))
        return sof + 5, SOF_SIZE, False
    return frame.find(b"\xff\x51") + 6, SIZ_SIZE, True


@pytest.fixture
def pixels() -> np.ndarray:
    return synth_mammogram(np.random.default_rng(8), size=(ROWS, COLUMNS))  # 12-bit


def _encoded(tmp_path: Path, pixels: np.ndarray, syntax: str, bits: int) -> Path:
    """The image, compressed with ``syntax``; HTJ2K as a JPEG 2000 codestream (a Part 15
    decoder reads Part 1), since nothing here encodes HTJ2K."""
    stored = pixels >> (12 - bits)
    source = write_dicom(tmp_path / "src.dcm", stored, study_uid="1.2.826.0.1.3680043.8.498.60",
                         sop_uid="1.2.826.0.1.3680043.8.498.61", laterality=Laterality.LEFT,
                         view=View.CC, bits=bits)
    if bits == 8:  # JPEG baseline holds 8-bit samples in 8-bit words
        rewrite_dicom(source, BitsAllocated=8, PixelData=stored.astype(np.uint8).tobytes())
    encoded_as = pydicom.uid.JPEG2000Lossless if syntax == pydicom.uid.HTJ2KLossless else syntax
    try:
        path = write_compressed(source, tmp_path / "mg.dcm", encoded_as)
    except RuntimeError as exc:
        pytest.skip(f"no encoder: {exc}")
    if encoded_as != syntax:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path)
    return path


def _frame(path: Path) -> bytes:
    return bytes(get_frame(pydicom.dcmread(path).PixelData, 0, number_of_frames=1))


def _with_frame(path: Path, fragments: list[bytes]) -> Path:
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate(fragments) if len(fragments) == 1 else (
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty Basic Offset Table, then the items
        + b"".join(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(f)) + f for f in fragments))
    ds.save_as(path)
    return path


def _declaring(path: Path, columns: int, rows: int) -> Path:
    """``path`` with its codestream's size (only) changed to ``columns`` x ``rows``."""
    frame = bytearray(_frame(path))
    at, form, columns_first = _size_at(bytes(frame))
    frame[at:at + struct.calcsize(form)] = struct.pack(
        form, *((columns, rows) if columns_first else (rows, columns)))
    return _with_frame(path, [bytes(frame)])


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decode a plugin or GDCM's own reader is asked for, each let through."""
    calls: list[str] = []

    def spy(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)
        return recorded

    monkeypatch.setattr(Decoder, "as_array", spy(Decoder.as_array, "pydicom"))
    monkeypatch.setattr(gdcm_direct, "decode_stored_values",
                        spy(gdcm_direct.decode_stored_values, "gdcm_direct"))
    return calls


def _refused(path: Path, error: type[InputError], max_pixels: int = BIG) -> str:
    with pytest.raises(error) as caught:
        decode(path, max_pixels=max_pixels)
    return caught.value.message


@pytest.mark.parametrize("syntax, bits", SYNTAXES, ids=SYNTAX_IDS)
def test_every_syntax_still_decodes_and_its_frame_header_is_the_one_checked(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str], syntax: str,
        bits: int) -> None:
    path = _encoded(tmp_path, pixels, syntax, bits)
    declared = dicom._frame_header(pydicom.dcmread(path))
    assert declared is not None
    assert (declared.columns, declared.rows, declared.components) == (COLUMNS, ROWS, 1)
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == (ROWS, COLUMNS)
    assert decoded.notes["transfer_syntax"] == UID(syntax).name
    assert len(decodes) == 1  # the spy sees decoding where it happens


@pytest.mark.parametrize("syntax, bits", SYNTAXES, ids=SYNTAX_IDS)
def test_a_codestream_declaring_60000_squared_is_refused_as_too_large_undecoded(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str], syntax: str,
        bits: int) -> None:
    path = _declaring(_encoded(tmp_path, pixels, syntax, bits), 60000, 60000)
    message = _refused(path, ImageTooLargeError)
    assert decodes == []  # nothing allocated for 3.6 G pixels
    assert message.startswith(
        "mg.dcm: the (7FE0,0010) Pixel Data was not decoded: its compressed data (")
    assert (") declares 60000 x 60000 pixels (3,600,000,000), past the limit of 100,000,000 "
            "pixels (setting MAMMO_MAX_IMAGE_PIXELS), where (0028,0011) Columns and "
            "(0028,0010) Rows say 128 x 160. The file is damaged or built to exhaust memory: "
            "export the image again.") in message, message


@pytest.mark.parametrize("syntax, bits", SYNTAXES, ids=SYNTAX_IDS)
def test_a_codestream_declaring_another_size_within_the_limit_is_refused_as_unreadable(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str], syntax: str,
        bits: int) -> None:
    path = _declaring(_encoded(tmp_path, pixels, syntax, bits), COLUMNS * 4, ROWS * 4)
    message = _refused(path, UnreadableImageError)
    assert decodes == []
    assert message.endswith(
        " declares 512 x 640 pixels, where (0028,0011) Columns and (0028,0010) Rows say "
        "128 x 160. The file is damaged: export the image again."), message


def test_the_repro_bomb_within_a_512_x_416_header_is_refused_at_once(
        tmp_path: Path, decodes: list[str]) -> None:
    """The probe's file: JPEG 2000, Xsiz/Ysiz and the tile size 60000, header 512 x 416."""
    pixels = synth_mammogram(np.random.default_rng(7), size=(512, 416))
    path = _encoded(tmp_path, pixels, pydicom.uid.JPEG2000Lossless, 12)
    frame = bytearray(_frame(path))
    siz = frame.find(b"\xff\x51")
    frame[siz + 6:siz + 14] = struct.pack(">II", 60000, 60000)
    frame[siz + 22:siz + 30] = struct.pack(">II", 60000, 60000)
    _with_frame(path, [bytes(frame)])
    with pytest.raises(ImageTooLargeError) as caught:
        decode(path, max_pixels=80_000_000)
    assert caught.value.code is ErrorCode.TOO_LARGE and decodes == []
    assert "(JPEG 2000) declares 60000 x 60000 pixels" in caught.value.message


def test_a_header_split_over_fragments_is_read_across_them(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str]) -> None:
    """A first fragment of two bytes: the frame header is in the next one."""
    path = _encoded(tmp_path, pixels, pydicom.uid.JPEGLosslessSV1, 12)
    frame = _frame(_declaring(path, 60000, 60000))
    _with_frame(path, [frame[:2], frame[2:]])
    _refused(path, ImageTooLargeError)
    assert decodes == []


def test_a_fragmented_normal_frame_still_decodes(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str]) -> None:
    path = _encoded(tmp_path, pixels, pydicom.uid.JPEG2000Lossless, 12)
    frame = _frame(path)
    _with_frame(path, [frame[:20], frame[20:100], frame[100:]])
    assert decode(path, max_pixels=BIG).pixels.shape == (ROWS, COLUMNS)
    assert decodes == ["pydicom"]


def test_a_frame_whose_components_are_not_the_samples_per_pixel_is_refused(
        tmp_path: Path, pixels: np.ndarray, decodes: list[str]) -> None:
    """A colour JPEG under a grey header: GDCM decoded a third of its bytes as the image."""
    grey = (pixels >> 4).astype(np.uint8)
    source = write_dicom(tmp_path / "src.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.62",
                         sop_uid="1.2.826.0.1.3680043.8.498.63", laterality=Laterality.LEFT,
                         view=View.CC)
    rewrite_dicom(source, PhotometricInterpretation="RGB", SamplesPerPixel=3,
                  PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7,
                  WindowCenter=None, WindowWidth=None,
                  PixelData=np.stack([grey] * 3, axis=-1).tobytes())
    try:
        path = write_compressed(source, tmp_path / "mg.dcm", pydicom.uid.JPEGBaseline8Bit)
    except RuntimeError as exc:
        pytest.skip(f"no encoder: {exc}")
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.pop("PlanarConfiguration", None)
    ds.save_as(path)
    message = _refused(path, UnreadableImageError)
    assert decodes == []
    assert message == (
        "mg.dcm: the (7FE0,0010) Pixel Data was not decoded: its compressed data (JPEG) "
        "declares 3 component(s) a pixel, where (0028,0002) Samples per Pixel says 1. The "
        "file is damaged: export the image again.")


# --- the codestream readers on crafted bytes ------------------------------------------------

def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _sof(marker: int, rows: int, columns: int, components: int = 1) -> bytes:
    return _segment(marker, struct.pack(">BHHB", 12, rows, columns, components)
                    + b"\x01\x11\x00" * components)


SOS = _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x12\x34"


def test_jpeg_bytes_that_are_no_marker_are_skipped_as_libjpeg_skips_them() -> None:
    data = (b"\xff\xd8" + _segment(0xE0, b"JFIF\x00" + bytes(300)) + b"\x00\x13\x37"
            + b"\xff\xff" + _sof(0xC3, 60000, 60000) + SOS)
    assert frame_header(data) == FrameHeader("JPEG", 60000, 60000, 1)


def test_a_jpeg_height_left_to_a_dnl_marker_is_not_declared() -> None:
    assert frame_header(b"\xff\xd8" + _sof(0xC1, 0, 128) + SOS) == FrameHeader(
        "JPEG", 128, 0, 1)


def test_a_jpeg_ls_size_from_an_lse_oversize_segment_counts() -> None:
    oversize = _segment(0xF8, b"\x04\x04" + struct.pack(">II", 70000, 80000))
    assert frame_header(b"\xff\xd8" + _sof(0xF7, 0, 0) + oversize + SOS) == FrameHeader(
        "JPEG-LS", 80000, 70000, 1)
    # Both stated: the larger counts, whichever a decoder takes.
    assert frame_header(b"\xff\xd8" + _sof(0xF7, 160, 128) + oversize + SOS) == FrameHeader(
        "JPEG-LS", 80000, 70000, 1)


def _siz(columns: int, rows: int, components: int, rsiz: int = 0) -> bytes:
    return (b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIIIH", 38 + 3 * components, rsiz,
                                              columns, rows, 0, 0, columns, rows, 0, 0,
                                              components) + b"\x0b\x01\x01" * components)


def test_a_jp2_file_is_read_to_its_codestream_box() -> None:
    boxes = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
             + b"\x00\x00\x00\x10jp2h" + bytes(8))
    codestream = _siz(60000, 50000, 1)
    assert frame_header(boxes + struct.pack(">I", 8 + len(codestream)) + b"jp2c"
                        + codestream) == FrameHeader("JPEG 2000", 60000, 50000, 1)


def test_a_jpeg_2000_siz_names_htj2k_and_its_components() -> None:
    assert frame_header(_siz(128, 160, 16384, rsiz=1 << 14)) == FrameHeader(
        "HTJ2K", 128, 160, 16384)


@pytest.mark.parametrize("data", [
    b"\xff\xd8",  # too short to tell what it is
    b"\xff\xd8" + _segment(0xE0, bytes(100))[:50],  # a segment running past the end
    b"\xff\xd8" + _segment(0xE0, bytes(20)) + _sof(0xC3, 1, 1)[:8],  # a cut frame header
    _siz(128, 160, 1)[:30],  # a cut SIZ
], ids=["short", "segment", "sof", "siz"])
def test_data_that_ends_before_the_header_asks_for_more(data: bytes) -> None:
    with pytest.raises(Incomplete):
        frame_header(data)


def test_rle_and_other_data_declare_nothing() -> None:
    rle_header = struct.pack("<16I", 1, 64, *([0] * 14))
    assert frame_header(rle_header) is None
    assert frame_header(b"\xff\xd8" + SOS + bytes(20)) is None  # a scan before any SOF
