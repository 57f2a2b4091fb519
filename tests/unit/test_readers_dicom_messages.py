"""The sentence a person reads when a DICOM is refused: a library's error is repeated short
and printable, never the file's bytes it quoted; the error in full goes to the log. A
compressed frame whose codestream declares another size than the header is named so, not
by the decoder's internals."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame

from shared.enums import ErrorCode, Laterality, View
from shared.errors import UnreadableImageError
from shared.imaging.readers import decode, dicom, dicom_meta
from shared.synthetic import synth_mammogram, write_compressed, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom

BIG = 10**8
GARBAGE = b"\x00\x01\xfe\x7f\x05\x06\x07\x08"


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    pixels = synth_mammogram(np.random.default_rng(8), size=(160, 128))
    return write_dicom(tmp_path / "mg.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.80",
                       sop_uid="1.2.826.0.1.3680043.8.498.81", laterality=Laterality.LEFT,
                       view=View.CC)


def _refusal(path: Path) -> str:
    with pytest.raises(UnreadableImageError) as caught:
        decode(path, max_pixels=BIG)
    assert caught.value.code is ErrorCode.UNREADABLE
    return caught.value.message


def _garbage_in(path: Path, placeholder: bytes, **changes: object) -> None:
    """``changes`` written with ``placeholder`` where the value's bytes go, then the
    placeholder overwritten with binary garbage (bytes pydicom would refuse to write)."""
    rewrite_dicom(path, **changes)
    data = path.read_bytes()
    assert data.count(placeholder) == 1 and len(placeholder) == len(GARBAGE)
    path.write_bytes(data.replace(placeholder, GARBAGE))


def _readable(message: str) -> None:
    assert message.isprintable(), repr(message)
    assert "\\x" not in message and "b'" not in message, message


def test_a_library_error_quoting_the_files_bytes_names_no_bytes_and_logs_in_full(
        dicom_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pydicom's int() of a Number of Frames written as binary garbage: "invalid literal for
    int() with base 10: '\\x00\\x01...'" reached the person's message as it was."""
    _garbage_in(dicom_file, b"12345678", NumberOfFrames=12345678)
    with caplog.at_level(logging.INFO, logger=dicom.__name__):
        message = _refusal(dicom_file)
    assert message == ("mg.dcm could not be interpreted: invalid literal for int() with base "
                       "10: <binary data>.")
    logged = [r.getMessage() for r in caplog.records if r.name == dicom.__name__]
    assert len(logged) == 1
    assert logged[0].startswith("mg.dcm refused: ValueError: invalid literal for int()")
    assert 'File "' in logged[0] and ", line " in logged[0]  # where it was raised
    assert "\\x00" not in logged[0]


def test_a_library_error_is_cut_short_and_printable(
        dicom_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said = ("decoder said: " + "\x07\x1b[31m" + "detail " * 60
            + "b'" + "\\x00" * 300)  # a bytes literal cut off by its quoter: no end quote
    def fails(*_args: object) -> object:
        raise ValueError(said)
    monkeypatch.setattr(dicom_meta, "score_notes", fails)
    message = _refusal(dicom_file)
    _readable(message)
    prefix = "mg.dcm could not be interpreted: decoder said: ??[31mdetail detail"
    assert message.startswith(prefix) and message.endswith(" [...].")
    assert len(message) <= len("mg.dcm could not be interpreted: ") + 120 + 1


def test_a_bytes_literal_is_dropped_wherever_it_stands() -> None:
    def summary(text: str) -> str:
        return dicom._summary(ValueError(text))
    assert summary("got b'\\x00\\x10' and more") == "got <binary data> and more"
    assert summary("got b\"it's\" then") == "got <binary data> then"
    assert summary("can't read '\\x00\\x01abc'.") == "can't read <binary data>"
    # Quotes without escaped bytes stay: they name things.
    assert (summary("gdcm: 'NoneType' object has no attribute 'encode'")
            == "gdcm: 'NoneType' object has no attribute 'encode'")
    assert summary("....") == "ValueError"


def test_a_rescale_of_binary_garbage_is_quoted_printable(dicom_file: Path) -> None:
    _garbage_in(dicom_file, b"12345678", RescaleSlope="12345678", RescaleIntercept="0")
    message = _refusal(dicom_file)
    _readable(message)
    assert "(0028,1053) Rescale Slope is '??\u00fe?????'" in message


def test_a_window_of_binary_garbage_is_noted_printable(dicom_file: Path) -> None:
    _garbage_in(dicom_file, b"12345678", WindowCenter="12345678", WindowWidth=1024)
    voi = decode(dicom_file, max_pixels=BIG).notes["voi"]
    _readable(voi)
    assert voi == ("full range; window 1 not used: (0028,1050) Window Center '??\u00fe?????' is "
                   "not a number")


# --- a codestream declaring another size than the header --------------------------------

def _recompressed(source: Path, destination: Path, syntax: str) -> Path:
    try:
        return write_compressed(source, destination, syntax)
    except RuntimeError as exc:
        pytest.skip(f"no encoder: {exc}")


def _patched(path: Path, marker: bytes, offset: int, size: bytes) -> None:
    """The first frame's bytes at ``offset`` past ``marker`` overwritten with ``size``."""
    ds = pydicom.dcmread(path)
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    at = frame.find(marker) + offset
    frame[at:at + len(size)] = size
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path)


@pytest.mark.parametrize("syntax, marker", [
    (pydicom.uid.JPEGLosslessSV1, b"\xff\xc3"),  # SOF3, decoded by GDCM
    (pydicom.uid.JPEGLSLossless, b"\xff\xf7"),  # SOF55, decoded by pyjpegls
])
def test_a_frame_declaring_another_size_than_the_header_is_named_so(
        tmp_path: Path, dicom_file: Path, syntax: str, marker: bytes) -> None:
    """The decoders' own words were "gdcm: 'NoneType' object has no attribute 'encode'" and
    "pyjpegls: can't convert negative value to size_t"; the frame is now refused before any
    decoder sees it (tests/unit/test_readers_dicom_codestream.py)."""
    path = _recompressed(dicom_file, tmp_path / "bomb.dcm", syntax)
    _patched(path, marker, 5, struct.pack(">HH", 600, 500))  # Y then X
    message = _refusal(path)
    assert message.startswith(
        "bomb.dcm: the (7FE0,0010) Pixel Data was not decoded: its compressed data (JPEG"), message
    assert message.endswith(
        ") declares 500 x 600 pixels, where (0028,0011) Columns and (0028,0010) Rows say "
        "128 x 160. The file is damaged: export the image again."), message


def test_a_jpeg_2000_codestream_size_is_read_from_its_siz_marker(
        tmp_path: Path, dicom_file: Path) -> None:
    """Not decoded here: openjpeg allocates for the size the codestream declares."""
    path = _recompressed(dicom_file, tmp_path / "j2k.dcm", pydicom.uid.JPEG2000Lossless)
    assert dicom._codestream_size(pydicom.dcmread(path)) == (128, 160)
    # SIZ: Lsiz, Rsiz, then Xsiz, Ysiz (4 bytes each), XOsiz, YOsiz.
    _patched(path, b"\xff\x51", 6, struct.pack(">II", 60000, 50000))
    assert dicom._codestream_size(pydicom.dcmread(path)) == (60000, 50000)


def test_a_jpeg_frames_size_is_read_past_its_other_segments(
        tmp_path: Path, dicom_file: Path) -> None:
    path = _recompressed(dicom_file, tmp_path / "jpeg.dcm", pydicom.uid.JPEGLosslessSV1)
    assert dicom._codestream_size(pydicom.dcmread(path)) == (128, 160)
