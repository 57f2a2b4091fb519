"""DICOM as screening centres send it: compressed syntaxes, VOI LUT forms, header metadata,
pseudonymised patient IDs, and hostile files. Every DICOM here is generated with pydicom."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder

from producer.watch.completeness import is_complete
from shared.enums import ErrorCode, Laterality, View
from shared.errors import (
    ImageTooLargeError,
    InputError,
    MissingPixelDataError,
    NotAMammogramError,
    PseudonymKeyMissingError,
    UnexpectedChannelsError,
    UnreadableImageError,
    UnsupportedCompressionError,
    UnsupportedFormatError,
)
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode, read_header
from shared.imaging.readers.dicom import HEADER_INFLATE_LIMIT, DicomReader
from shared.imaging.types import ImageHeader
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_compressed, write_dicom
from tests.helpers.bad_inputs import deflated_dicom, good_dicom
from tests.helpers.dicom_edit import rewrite_dicom
from worker.decoding import input_notes

BIG = 10**8
PATIENT = "PAT-0042-REAL-LOOKING"
KEY = Pseudonymizer(b"unit-test-key-not-a-secret")


@pytest.fixture
def pixels() -> np.ndarray:
    return synth_mammogram(np.random.default_rng(8), size=(160, 128))


@pytest.fixture
def dicom_file(tmp_path: Path, pixels: np.ndarray) -> Path:
    return write_dicom(tmp_path / "mg.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.20",
                       sop_uid="1.2.826.0.1.3680043.8.498.21", laterality=Laterality.LEFT,
                       view=View.CC, patient_id=PATIENT)


_rewrite = rewrite_dicom


def _refused(path: Path, error: type[InputError], code: ErrorCode, *phrases: str) -> str:
    with pytest.raises(error) as caught:
        decode(path, max_pixels=BIG)
    assert caught.value.code is code
    for phrase in phrases:
        assert phrase in caught.value.message, caught.value.message
    assert PATIENT not in caught.value.message
    return caught.value.message


# --- compressed transfer syntaxes, encoded here and decoded through the chosen plugin -----

@pytest.mark.parametrize("syntax, plugin", [
    (pydicom.uid.RLELossless, None),
    (pydicom.uid.JPEGLSLossless, "pyjpegls"),
    (pydicom.uid.JPEG2000Lossless, "pylibjpeg"),
    (pydicom.uid.DeflatedExplicitVRLittleEndian, None),
])
def test_lossless_syntaxes_round_trip(dicom_file: Path, pixels: np.ndarray,
                                      syntax: pydicom.uid.UID, plugin: str | None) -> None:
    if syntax.is_compressed and not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder installed for {syntax.name}")
    if syntax.is_compressed and not get_decoder(syntax).is_available:
        pytest.skip(f"no decoder installed for {syntax.name}")
    ds = pydicom.dcmread(dicom_file)
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(dicom_file)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["transfer_syntax"] == syntax.name
    if plugin and plugin in get_decoder(syntax).available_plugins:
        assert decoded.notes["decoder"] == plugin  # chosen explicitly, not pydicom's order
    assert decoded.pixels.dtype == np.float32 and decoded.max_value == 4095
    np.testing.assert_array_equal(decoded.pixels, pixels.astype(np.float32))


@pytest.mark.parametrize("syntax, bits, tolerance", [
    (pydicom.uid.JPEGLosslessSV1, 12, 0.0),
    (pydicom.uid.JPEGLossless, 12, 0.0),
    (pydicom.uid.JPEGExtended12Bit, 12, 8.0),  # lossy: mean error in 12-bit levels
    (pydicom.uid.JPEGBaseline8Bit, 8, 1.0),
])
def test_jpeg_family_round_trip(tmp_path: Path, pixels: np.ndarray, syntax: pydicom.uid.UID,
                                bits: int, tolerance: float) -> None:
    stored = pixels >> (12 - bits)
    source = write_dicom(tmp_path / "src.dcm", stored, study_uid="1.2.5", sop_uid="1.2.5.1",
                         laterality=Laterality.LEFT, view=View.CC, bits=bits)
    if bits == 8:  # JPEG baseline holds 8-bit samples in 8-bit words
        _rewrite(source, BitsAllocated=8, PixelData=stored.astype(np.uint8).tobytes())
    try:
        encoded = write_compressed(source, tmp_path / "jpeg.dcm", syntax)
    except RuntimeError as exc:
        pytest.skip(f"no encoder: {exc}")
    decoded = decode(encoded, max_pixels=BIG)
    assert decoded.notes["transfer_syntax"] == syntax.name
    assert decoded.max_value == 2**bits - 1
    error = float(np.abs(decoded.pixels - stored.astype(np.float32)).mean())
    assert error <= tolerance


def test_syntax_nobody_decodes_names_itself(dicom_file: Path) -> None:
    ds = pydicom.dcmread(dicom_file)
    # A vendor's private compression (videos, MPEG, are refused as such: test_readers.py).
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.8.498.999"
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(dicom_file)
    _refused(dicom_file, UnsupportedCompressionError, ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
             "an unknown transfer syntax", "1.2.826.0.1.3680043.8.498.999", "cannot decode")


# --- VOI LUT forms ------------------------------------------------------------------------

def _window(dicom_file: Path, centre: object, width: object, function: str | None = None,
            explanation: object = None) -> Dataset:
    changes: dict[str, object] = {"WindowCenter": centre, "WindowWidth": width}
    if function:
        changes["VOILUTFunction"] = function
    if explanation:
        changes["WindowCenterWidthExplanation"] = explanation
    return _rewrite(dicom_file, **changes)


def test_linear_window_clips_outside_and_is_recorded(dicom_file: Path,
                                                     pixels: np.ndarray) -> None:
    _window(dicom_file, 1024, 1024)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"].startswith("window 1 of 1: centre 1024, width 1024, LINEAR")
    dark, bright = pixels <= 400, pixels >= 1600
    assert (decoded.pixels[dark] == 0).all() and (decoded.pixels[bright] == 4095).all()


def test_linear_exact_and_sigmoid_windows(dicom_file: Path, pixels: np.ndarray) -> None:
    results = {}
    for function in ("LINEAR_EXACT", "SIGMOID"):
        _window(dicom_file, 2048, 2048, function)
        decoded = decode(dicom_file, max_pixels=BIG)
        assert function in decoded.notes["voi"]
        assert float(decoded.pixels.min()) >= 0 and float(decoded.pixels.max()) <= 4095
        results[function] = decoded.pixels
    # Both are monotonic in the stored value, but SIGMOID never reaches the ends exactly.
    order = np.argsort(pixels.ravel(), kind="stable")
    for values in results.values():
        assert (np.diff(values.ravel()[order]) >= -1e-3).all()
    assert not np.array_equal(results["LINEAR_EXACT"], results["SIGMOID"])


def test_several_windows_the_first_is_applied_and_recorded(tmp_path: Path,
                                                           dicom_file: Path) -> None:
    _window(dicom_file, [1024, 3000], [1024, 2000], explanation=["SOFT", "HARD"])
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == "window 1 of 2: centre 1024, width 1024, LINEAR (SOFT)"
    header = read_header(dicom_file, pseudonymize=KEY)
    assert header.voi == decoded.notes["voi"]
    only_first = tmp_path / "first.dcm"
    dicom_file.rename(only_first)
    _window(only_first, 1024, 1024)
    np.testing.assert_array_equal(decode(only_first, max_pixels=BIG).pixels, decoded.pixels)


def test_voi_lut_sequence_wins_over_windows_and_says_so(dicom_file: Path,
                                                        pixels: np.ndarray) -> None:
    ds = pydicom.dcmread(dicom_file)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 10]
    item.LUTExplanation = "NORMAL"
    item.add_new("LUTData", "US", [value // 4 for value in range(4096)])
    ds.VOILUTSequence = [item]
    ds.save_as(dicom_file)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == "VOI LUT 1 of 1 (NORMAL); 1 window(s) not used"
    assert decoded.max_value == 1023
    np.testing.assert_array_equal(decoded.pixels, pixels // 4)


def _written_as(path: Path, placeholder: str, written: str) -> None:
    """Replace a value pydicom wrote with bytes it would refuse to write (same length)."""
    data = path.read_bytes()
    assert len(placeholder) == len(written) and data.count(placeholder.encode()) == 1
    path.write_bytes(data.replace(placeholder.encode(), written.encode()))


@pytest.mark.parametrize("centre, width, written, read", [
    ("1024.0", "1024", "1024,0", "(0028,1050) Window Center '1024,0' read as 1024"),
    ("1024", "1024.00", "1024,00", "(0028,1051) Window Width '1024,00' read as 1024"),
])
def test_a_window_written_with_a_decimal_comma_is_read_and_noted(
        tmp_path: Path, dicom_file: Path, centre: str, width: str, written: str,
        read: str) -> None:
    """European-locale software writes "1024,0"; pydicom leaves it a string."""
    reference = tmp_path / "reference.dcm"
    reference.write_bytes(dicom_file.read_bytes())
    _window(reference, 1024, 1024)
    _window(dicom_file, centre, width)
    _written_as(dicom_file, written.replace(",", "."), written)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == (f"window 1 of 1: centre 1024, width 1024, LINEAR; {read} "
                                    "(decimal comma)")
    assert read_header(dicom_file, pseudonymize=KEY).voi == decoded.notes["voi"]
    np.testing.assert_array_equal(decoded.pixels, decode(reference, max_pixels=BIG).pixels)


@pytest.mark.parametrize("slope, intercept, written, note", [
    ("1.5", "-10.5", "-10,5", "(0028,1052) Rescale Intercept '-10,5' read as -10.5"),
    ("0.5", "100", "0,5", "(0028,1053) Rescale Slope '0,5' read as 0.5"),
])
def test_a_rescale_written_with_a_decimal_comma_is_read_and_noted(
        tmp_path: Path, dicom_file: Path, slope: str, intercept: str, written: str,
        note: str) -> None:
    """Read as a window written so is, where pydicom's Modality LUT would fail on it."""
    reference = tmp_path / "reference.dcm"
    reference.write_bytes(dicom_file.read_bytes())
    _rewrite(reference, RescaleSlope=slope, RescaleIntercept=intercept)
    _rewrite(dicom_file, RescaleSlope=slope, RescaleIntercept=intercept)
    _written_as(dicom_file, written.replace(",", "."), written)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["rescale"] == f"{note} (decimal comma)"
    expected = decode(reference, max_pixels=BIG)
    assert decoded.max_value == expected.max_value
    np.testing.assert_array_equal(decoded.pixels, expected.pixels)


@pytest.mark.parametrize("written, found", [("abc", "'abc'"), ("1\\2", "'1\\2'")])
def test_a_rescale_that_is_no_number_is_refused_naming_it(
        dicom_file: Path, written: str, found: str) -> None:
    _rewrite(dicom_file, RescaleSlope="9" * len(written), RescaleIntercept="0")
    _written_as(dicom_file, "9" * len(written), written)
    _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE,
             f"mg.dcm has an unusable rescale: (0028,1053) Rescale Slope is {found}, not one "
             "number", "Export the image again")


def test_a_window_that_is_no_number_gives_way_to_the_next_or_the_full_range(
        dicom_file: Path, pixels: np.ndarray) -> None:
    _window(dicom_file, ["1111.5", "2048"], [1024, 4096])
    _written_as(dicom_file, "1111.5", "2,048 ")  # a thousands separator, or 2.048?
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == ("window 2 of 2: centre 2048, width 4096, LINEAR; window 1 "
                                    "not used: (0028,1050) Window Center '2,048' is not a number")
    _window(dicom_file, "1111.5", 1024)
    _written_as(dicom_file, "1111.5", "n/a   ")
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"].startswith("full range; window 1 not used: (0028,1050) Window")
    np.testing.assert_array_equal(decoded.pixels, pixels.astype(np.float32))


def test_an_unknown_voi_lut_function_is_applied_as_linear(tmp_path: Path,
                                                          dicom_file: Path) -> None:
    linear = tmp_path / "linear.dcm"
    linear.write_bytes(dicom_file.read_bytes())
    _window(linear, 1024, 1024, "LINEAR")
    _window(dicom_file, 1024, 1024, "BOGUS")
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == (
        "window 1 of 1: centre 1024, width 1024, LINEAR; (0028,1056) VOI LUT Function 'BOGUS' "
        "is no defined term: LINEAR applied, the standard's default")
    np.testing.assert_array_equal(decoded.pixels, decode(linear, max_pixels=BIG).pixels)


def test_a_voi_lut_shorter_than_its_descriptor_gives_way_to_the_window(
        tmp_path: Path, dicom_file: Path) -> None:
    window_only = tmp_path / "window.dcm"
    _window(dicom_file, 1024, 1024)
    window_only.write_bytes(dicom_file.read_bytes())
    ds = pydicom.dcmread(dicom_file)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", np.arange(100, dtype="<u2").tobytes())
    ds.VOILUTSequence = [item]
    ds.save_as(dicom_file)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == (
        "window 1 of 1: centre 1024, width 1024, LINEAR; VOI LUT 1 not used: (0028,3006) LUT "
        "Data holds 100 entries, 4,096 declared by (0028,3002) LUT Descriptor")
    np.testing.assert_array_equal(decoded.pixels, decode(window_only, max_pixels=BIG).pixels)


def test_a_window_width_below_one_is_refused_naming_it(dicom_file: Path) -> None:
    _window(dicom_file, 2048, -5)
    _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE,
             "mg.dcm has an unusable window: (0028,1051) Window Width is -5",
             "a LINEAR window needs a width of at least 1")


def test_monochrome1_with_a_window_preprocesses_like_monochrome2(
        tmp_path: Path, dicom_file: Path, pixels: np.ndarray) -> None:
    mono1 = write_dicom(tmp_path / "m1.dcm", pixels, study_uid="1.2.3", sop_uid="1.2.3.9",
                        laterality=Laterality.LEFT, view=View.CC, monochrome1=True)
    decoded = decode(mono1, max_pixels=BIG)
    assert decoded.invert
    expected = preprocess(decode(dicom_file, max_pixels=BIG), (64, 52))
    np.testing.assert_allclose(preprocess(decoded, (64, 52)), expected, atol=1e-5)


def _presentation_lut(descending: bool, vr: str = "US") -> Dataset:
    table = Dataset()
    table.LUTDescriptor = [4096, 0, 12]
    entries = np.arange(4096, dtype="<u2")[::-1 if descending else 1]
    table.add_new(0x00283006, vr, entries.tobytes() if vr == "OW" else entries.tolist())
    return table


@pytest.mark.parametrize("photometric, presentation, invert", [
    ("MONOCHROME2", {"PresentationLUTShape": "INVERSE"}, True),
    ("MONOCHROME2", {"PresentationLUTShape": "IDENTITY"}, False),
    ("MONOCHROME2", {"PresentationLUTSequence": [_presentation_lut(descending=True)]}, True),
    ("MONOCHROME2", {"PresentationLUTSequence": [_presentation_lut(descending=False)]}, False),
    ("MONOCHROME2", {"PresentationLUTSequence": [_presentation_lut(True, vr="OW")]}, True),
    # INVERSE is MONOCHROME1's normal encoding in DX and MG: never a second inversion.
    ("MONOCHROME1", {"PresentationLUTShape": "INVERSE"}, True),
    ("MONOCHROME1", {"PresentationLUTShape": "IDENTITY"}, True),
    ("MONOCHROME1", {}, True),
])
def test_presentation_lut_inverts_monochrome2_and_never_monochrome1_twice(
        tmp_path: Path, dicom_file: Path, pixels: np.ndarray, photometric: str,
        presentation: dict[str, object], invert: bool) -> None:
    """Stored values are written so that the image displays as ``dicom_file`` exactly when
    the reader's inversion rule is right."""
    stored = write_dicom(tmp_path / "p.dcm", pixels, study_uid="1.2.3", sop_uid="1.2.3.8",
                         laterality=Laterality.LEFT, view=View.CC, monochrome1=invert)
    _rewrite(stored, PhotometricInterpretation=photometric, PresentationLUTShape=None)
    _rewrite(stored, **presentation)
    decoded = decode(stored, max_pixels=BIG)
    assert decoded.invert is invert
    expected = preprocess(decode(dicom_file, max_pixels=BIG), (64, 52))
    np.testing.assert_allclose(preprocess(decoded, (64, 52)), expected, atol=1e-5)


def _padded(tmp_path: Path, pixels: np.ndarray, name: str, fill: int, *,
            monochrome1: bool = False, **padding: int) -> Path:
    """``pixels`` with its background (stored below 30 once displayed) written as ``fill``
    (a stored value), and the Pixel Padding attributes given."""
    shown = pixels.copy()
    shown[pixels < 30] = 0
    path = write_dicom(tmp_path / name, shown, study_uid="1.2.3", sop_uid=f"1.2.3.{len(name)}",
                       laterality=Laterality.LEFT, view=View.CC, monochrome1=monochrome1)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.copy()
    stored[pixels < 30] = fill
    ds.PixelData = stored.astype("<u2").tobytes()
    for keyword, value in padding.items():  # US: pydicom cannot write "US or SS" itself
        ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "US", value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("fill, monochrome1, padding", [
    (4095, False, {"PixelPaddingValue": 4095}),  # MONOCHROME2 padded white
    (0, True, {"PixelPaddingValue": 0}),  # MONOCHROME1: stored 0 displays white
    (4000, False, {"PixelPaddingValue": 4095, "PixelPaddingRangeLimit": 3990}),
    (20, True, {"PixelPaddingValue": 0, "PixelPaddingRangeLimit": 30}),
])
def test_pixel_padding_that_displays_bright_is_made_background(
        tmp_path: Path, pixels: np.ndarray, fill: int, monochrome1: bool,
        padding: dict[str, int]) -> None:
    """The breast mask would otherwise take the bright padding for the breast."""
    expected = preprocess(decode(_padded(tmp_path, pixels, "dark.dcm", 0), max_pixels=BIG),
                          (64, 52))
    padded = _padded(tmp_path, pixels, "bright.dcm", fill, monochrome1=monochrome1, **padding)
    np.testing.assert_allclose(preprocess(decode(padded, max_pixels=BIG), (64, 52)), expected,
                               atol=1e-5)


def test_pixel_padding_already_darkest_leaves_the_model_input_unchanged(
        tmp_path: Path, pixels: np.ndarray) -> None:
    """GE writes MONOCHROME2 with padding 0 to 30; with or without the attributes, and
    before this rule existed (no attribute: nothing to apply), the same model input."""
    plain = _padded(tmp_path, pixels, "plain.dcm", 0)
    declared = _padded(tmp_path, pixels, "declared.dcm", 0, PixelPaddingValue=0,
                       PixelPaddingRangeLimit=29)
    np.testing.assert_array_equal(preprocess(decode(declared, max_pixels=BIG), (64, 52)),
                                  preprocess(decode(plain, max_pixels=BIG), (64, 52)))


# --- refusals -----------------------------------------------------------------------------

def test_ct_is_not_mammography(dicom_file: Path) -> None:
    _rewrite(dicom_file, Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY, "'CT'")


def test_no_pixel_data(dicom_file: Path) -> None:
    _rewrite(dicom_file, PixelData=None)
    _refused(dicom_file, MissingPixelDataError, ErrorCode.MISSING_PIXEL_DATA, "(7FE0,0010)")


def test_huge_rows_and_columns_are_refused_before_allocating(dicom_file: Path) -> None:
    # 65535 x 65535 x 2 bytes would be 8.6 GB; the header alone condemns it.
    _rewrite(dicom_file, Rows=65535, Columns=65535)
    with pytest.raises(ImageTooLargeError) as caught:
        decode(dicom_file, max_pixels=80_000_000)
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert "65535 x 65535" in caught.value.message


# --- deflated datasets: inflated only as far as read, and never past what the header allows

MiB = 1 << 20


def _peak_allocation(step: Callable[[], object]) -> tuple[object, int]:
    """``step``'s result (or the InputError it raised) and the most memory it held at once."""
    tracemalloc.start()
    try:
        try:
            result: object = step()
        except InputError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_deflate_bomb_is_refused_before_its_pixels_inflate(tmp_path: Path) -> None:
    # A 30 kB file whose Pixel Data inflates to 32 MiB for a declared 80 x 96 image.
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 1, pixel_bytes=32 * MiB)
    reader = DicomReader(header_inflate_limit=MiB)
    header, peak = _peak_allocation(lambda: reader.read_header(bomb))
    assert isinstance(header, ImageHeader) and (header.rows, header.columns) == (96, 80)
    assert peak < MiB, f"the header read held {peak:,} bytes"  # the pixels stayed deflated
    refusal, peak = _peak_allocation(lambda: reader.decode(bomb, max_pixels=BIG))
    assert isinstance(refusal, ImageTooLargeError), refusal
    assert refusal.code is ErrorCode.TOO_LARGE
    for phrase in ("bomb.dcm", "Deflated Explicit VR Little Endian", "inflates past",
                   "15,360 bytes of pixel data its header declares (80 x 96"):
        assert phrase in refusal.message, refusal.message
    assert peak < 4 * MiB, f"the decode held {peak:,} bytes"  # the cap, not 32 MiB


def test_deflated_header_elements_past_the_allowance_are_refused_by_the_header_read(
        tmp_path: Path) -> None:
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 2, private_bytes=8 * MiB)
    reader = DicomReader(header_inflate_limit=MiB)
    for step in (lambda: reader.read_header(bomb), lambda: reader.decode(bomb, max_pixels=BIG)):
        refusal, peak = _peak_allocation(step)
        assert isinstance(refusal, ImageTooLargeError), refusal
        assert "inflates past 1,048,576 bytes" in refusal.message, refusal.message
        assert peak < 4 * MiB, peak


def test_the_drop_folder_completeness_check_inflates_no_further_than_the_header_allows(
        tmp_path: Path) -> None:
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 5, pixel_bytes=96 * MiB)
    complete, peak = _peak_allocation(lambda: is_complete(bomb))
    assert complete is False  # refused as too large; queued after the grace period, then
    assert peak < HEADER_INFLATE_LIMIT + 8 * MiB, f"held {peak:,} bytes"  # failed too_large
    assert is_complete(deflated_dicom(tmp_path / "good.dcm", 5)) is True


def test_a_deflated_dicom_reads_like_the_same_image_uncompressed(tmp_path: Path) -> None:
    deflated = deflated_dicom(tmp_path / "deflated.dcm", 3)
    plain = good_dicom(tmp_path / "plain.dcm", 3)
    assert read_header(deflated) == read_header(plain)
    image = decode(deflated, max_pixels=BIG)
    assert image.notes["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    np.testing.assert_array_equal(image.pixels, decode(plain, max_pixels=BIG).pixels)


@pytest.mark.parametrize("deflated", [False, True])
def test_pixel_data_a_whole_image_longer_than_declared_is_refused_clearly(
        tmp_path: Path, deflated: bool) -> None:
    # pydicom would return three frames, and the refusal would only give their shape.
    path = tmp_path / "long.dcm"
    if deflated:
        deflated_dicom(path, 4, pixel_bytes=3 * 96 * 80 * 2)
    else:
        rewrite_dicom(good_dicom(path, 4), PixelData=bytes(3 * 96 * 80 * 2))
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE, "long.dcm",
             "46,080 bytes, 3 times the 15,360 its header declares",
             "the header does not describe the pixels")


def test_constant_image_is_empty(tmp_path: Path) -> None:
    flat = write_dicom(tmp_path / "flat.dcm", np.full((100, 100), 900, np.uint16),
                       study_uid="1.2.4", sop_uid="1.2.4.1", laterality=Laterality.LEFT,
                       view=View.CC)
    with pytest.raises(InputError) as caught:
        preprocess(decode(flat, max_pixels=BIG), (64, 64))
    assert caught.value.code is ErrorCode.EMPTY_IMAGE


@pytest.mark.parametrize("content, code", [
    (b"", ErrorCode.UNREADABLE),
    (os.urandom(5000), ErrorCode.NOT_DICOM_OR_IMAGE),
    (b"patient list\nname,id\n" * 20, ErrorCode.NOT_DICOM_OR_IMAGE),
], ids=["empty", "random-bytes", "text"])  # fixed ids: xdist workers must collect alike
def test_bad_files_named_dcm(tmp_path: Path, content: bytes, code: ErrorCode) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content.replace(b"DICM", b"XXXX"))
    with pytest.raises(InputError) as caught:
        decode(path, max_pixels=BIG)
    assert caught.value.code is code
    if code is ErrorCode.NOT_DICOM_OR_IMAGE:
        assert isinstance(caught.value, UnsupportedFormatError)


def test_truncated_compressed_dicom(tmp_path: Path, dicom_file: Path) -> None:
    ds = pydicom.dcmread(dicom_file)
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(dicom_file)
    data = dicom_file.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError) as caught:
        decode(cut, max_pixels=BIG)
    assert caught.value.code is ErrorCode.TRUNCATED
    assert "cut.dcm is truncated" in caught.value.message


def test_rgb_jpeg_grey_is_accepted_colour_is_refused(tmp_path: Path,
                                                     pixels: np.ndarray) -> None:
    grey = (pixels >> 4).astype(np.uint8)
    as_rgb = tmp_path / "grey.jpg"
    cv2.imwrite(str(as_rgb), cv2.merge([grey, grey, grey]))
    decoded = decode(as_rgb, max_pixels=BIG)
    assert decoded.pixels.shape == grey.shape and "colour" in decoded.notes
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.merge([grey, np.zeros_like(grey), 255 - grey]))
    with pytest.raises(UnexpectedChannelsError) as caught:
        decode(photo, max_pixels=BIG)
    assert caught.value.code is ErrorCode.UNEXPECTED_CHANNELS
    assert "colour" in caught.value.message


def _as_colour(path: Path, photometric: str, channels: list[np.ndarray]) -> Path:
    return _rewrite(path, PhotometricInterpretation=photometric, SamplesPerPixel=3,
                    PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7,
                    WindowCenter=None, WindowWidth=None,
                    PixelData=np.stack(channels, axis=-1).astype(np.uint8).tobytes()).filename


@pytest.mark.parametrize("photometric, chroma", [("RGB", None), ("YBR_FULL", 128)])
def test_grey_stored_as_rgb_or_ybr_dicom_is_merged_like_a_raster_image(
        dicom_file: Path, pixels: np.ndarray, photometric: str, chroma: int | None) -> None:
    grey = (pixels >> 4).astype(np.uint8)
    others = [grey, grey] if chroma is None else [np.full_like(grey, chroma)] * 2
    _as_colour(dicom_file, photometric, [grey, *others])
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["colour"] == "grey stored as colour channels, merged"
    assert decoded.max_value == 255
    np.testing.assert_allclose(decoded.pixels, grey.astype(np.float32), atol=1)


def test_colour_rgb_dicom_is_still_refused(dicom_file: Path, pixels: np.ndarray) -> None:
    grey = (pixels >> 4).astype(np.uint8)
    _as_colour(dicom_file, "RGB", [grey, 255 - grey, grey // 2])
    _refused(dicom_file, UnexpectedChannelsError, ErrorCode.UNEXPECTED_CHANNELS,
             "mg.dcm is a colour image")


# --- image size and damaged headers ---------------------------------------------------------

def test_rows_zero_is_named_not_called_a_non_image(dicom_file: Path) -> None:
    _rewrite(dicom_file, Rows=0)
    message = _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE,
                       "mg.dcm declares an image of no size: (0028,0010) Rows is 0")
    assert "not an image" not in message


def test_a_mammogram_without_rows_is_not_called_another_kind_of_object(
        dicom_file: Path) -> None:
    _rewrite(dicom_file, Columns=None)
    message = _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY,
                       "mg.dcm contains no image: (0028,0011) Columns is missing")
    assert "class" not in message


def test_a_header_cut_short_by_a_corrupt_length_is_damaged_not_a_non_image(
        dicom_file: Path) -> None:
    _rewrite(dicom_file, StudyDescription="MAMMO SCREEN")
    data = dicom_file.read_bytes()
    at = data.index(b"MAMMO SCREEN") - 2  # explicit VR LO: a 2-byte length before the value
    dicom_file.write_bytes(data[:at] + (0xFFF0).to_bytes(2, "little") + data[at + 2:])
    message = _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE,
                       "mg.dcm has a damaged header: its (0008,1030) Study Description element "
                       "declares 65,520 bytes", "(0028,0010) Rows")
    assert "not an image" not in message


# --- header metadata ----------------------------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.mark.parametrize("code, expected", [
    (_code("R-10242", "SRT", "cranio-caudal"), View.CC),
    (_code("399368009", "SCT", "medio-lateral oblique"), View.MLO),
    (_code("R-1024A", "SRT", "cranio-caudal exaggerated laterally"), View.XCCL),
    (_code("399192008", "SCT", "XCCL"), View.XCCL),  # by code alone (CID 4014)
    (_code("X-1", "99LOCAL", "latero-medial"), View.LM),
    (_code("X-2", "99LOCAL", "something else"), View.OTHER),
])
def test_view_falls_back_to_view_code_sequence(dicom_file: Path, code: Dataset,
                                               expected: View) -> None:
    _rewrite(dicom_file, ViewPosition=None, ViewCodeSequence=[code])
    assert read_header(dicom_file, pseudonymize=KEY).view is expected


@pytest.mark.parametrize("code", [
    _code("127457009", "SCT", "tissue specimen from breast"),
    _code("G-8310", "SRT", "tissue specimen from breast"),
    _code("X-3", "99LOCAL", "Specimen"),
])
def test_specimen_radiograph_is_not_a_screening_mammogram(dicom_file: Path,
                                                          code: Dataset) -> None:
    _rewrite(dicom_file, ViewPosition=None, ViewCodeSequence=[code])
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY,
             "a specimen radiograph, not a screening mammogram", "(0054,0220)",
             str(code.CodeValue))


@pytest.mark.parametrize("orientation, expected, chest_wall", [
    ("CC", View.CC, None), ("MLO", View.MLO, None), (["A", "R"], None, "left"),
    ("AR", None, None), ("", None, None)])
def test_view_named_in_patient_orientation_is_read_as_a_last_resort(
        dicom_file: Path, orientation: object, expected: View | None,
        chest_wall: str | None) -> None:
    """CBIS-DDSM's convention (its files carry no View Position)."""
    _rewrite(dicom_file, ViewPosition=None, PatientOrientation=orientation)
    assert read_header(dicom_file, pseudonymize=KEY).view is expected
    assert decode(dicom_file, max_pixels=BIG).chest_wall_side == chest_wall


@pytest.mark.parametrize("position, laterality, expected, flags", [
    ("RMLO", "R", View.MLO, ()), ("LCC", "L", View.CC, ()), ("LCC", None, View.CC, ()),
    ("LM", "R", View.LM, ()), ("RLMO", "R", View.LMO, ()),
    ("CCID", "L", View.CC, ("implant_displaced",)),
    ("LMLOID", "L", View.MLO, ("implant_displaced",)),
    # A letter that contradicts the image laterality: the view is still read, and the
    # laterality conflict noted (tests/unit/test_view_position_laterality.py).
    ("RCC", "L", View.CC, ()),
    ("SPOT", "L", View.XCCL, ()),
])
def test_a_view_position_naming_no_known_view_defers_to_the_view_code_sequence(
        dicom_file: Path, position: str, laterality: str | None, expected: View,
        flags: tuple[str, ...]) -> None:
    _rewrite(dicom_file, ViewPosition=position, ImageLaterality=laterality,
             ViewCodeSequence=[_code("R-1024A", "SRT", "cranio-caudal exaggerated laterally")])
    header = read_header(dicom_file, pseudonymize=KEY)
    assert (header.view, header.view_flags) == (expected, flags)


def test_a_known_view_position_wins_and_an_unknown_one_alone_is_other(
        dicom_file: Path) -> None:
    _rewrite(dicom_file, ViewPosition="MLO",
             ViewCodeSequence=[_code("R-10242", "SRT", "cranio-caudal")])
    assert read_header(dicom_file, pseudonymize=KEY).view is View.MLO
    _rewrite(dicom_file, ViewPosition="SPOT", ViewCodeSequence=None, PatientOrientation="CC")
    assert read_header(dicom_file, pseudonymize=KEY).view is View.OTHER


def test_view_position_wins_over_a_view_in_patient_orientation(dicom_file: Path) -> None:
    _rewrite(dicom_file, PatientOrientation="MLO")
    assert read_header(dicom_file, pseudonymize=KEY).view is View.CC


def test_spot_compression_and_magnification_are_flagged(dicom_file: Path) -> None:
    view = _code("R-10242", "SRT", "cranio-caudal")
    view.ViewModifierCodeSequence = [_code("R-102D7", "SRT", "spot compression"),
                                     _code("R-102D6", "SRT", "magnification")]
    _rewrite(dicom_file, ViewCodeSequence=[view])
    assert read_header(dicom_file, pseudonymize=KEY).view_flags == (
        "magnification", "spot_compression")
    _rewrite(dicom_file, ViewCodeSequence=None, PaddleDescription="SPOT 9CM")
    assert read_header(dicom_file, pseudonymize=KEY).view_flags == ("spot_compression",)
    _rewrite(dicom_file, PaddleDescription=None, EstimatedRadiographicMagnificationFactor=1.8)
    assert read_header(dicom_file, pseudonymize=KEY).view_flags == ("magnification",)
    _rewrite(dicom_file, EstimatedRadiographicMagnificationFactor=1.08)
    assert read_header(dicom_file, pseudonymize=KEY).view_flags == ()


def test_laterality_falls_back_to_series_laterality(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImageLaterality=None, Laterality="R")
    assert read_header(dicom_file, pseudonymize=KEY).laterality is Laterality.RIGHT
    _rewrite(dicom_file, Laterality=None)
    assert read_header(dicom_file, pseudonymize=KEY).laterality is None


def test_lateralities_that_disagree_are_noted_with_the_one_scored(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImageLaterality="R", Laterality="L")

    notes = decode(dicom_file, max_pixels=BIG).notes

    assert read_header(dicom_file, pseudonymize=KEY).laterality is Laterality.RIGHT
    assert notes["laterality_conflict"] == (
        "(0020,0062) Image Laterality says R, but (0020,0060) Laterality says L: check the "
        "laterality; scored as R")
    # Through the worker's selection, to the prediction's input_notes.
    assert "laterality_conflict" in input_notes(notes)


def test_a_frame_laterality_against_the_series_is_noted(dicom_file: Path) -> None:
    anatomy = Dataset()
    anatomy.FrameLaterality = "L"
    _rewrite(dicom_file, ImageLaterality=None, Laterality="R",
             SharedFunctionalGroupsSequence=_functional_groups(FrameAnatomySequence=anatomy))
    assert decode(dicom_file, max_pixels=BIG).notes["laterality_conflict"] == (
        "(0020,0060) Laterality says R, but (0020,9072) Frame Laterality says L: check the "
        "laterality; scored as R")


@pytest.mark.parametrize("series", [None, "L", "U"])
def test_lateralities_that_agree_or_say_nothing_have_no_note(dicom_file: Path,
                                                             series: str | None) -> None:
    if series is not None:
        _rewrite(dicom_file, Laterality=series)
    assert "laterality_conflict" not in decode(dicom_file, max_pixels=BIG).notes


IMPLANT = ("(0028,1300) Breast Implant Present is YES: the model was not trained on breasts "
           "with implants (mini-MIAS has none); read this view without relying on its score")


def test_a_breast_with_an_implant_is_noted_for_a_reader(dicom_file: Path) -> None:
    plain = decode(dicom_file, max_pixels=BIG)
    _rewrite(dicom_file, BreastImplantPresent="YES")

    decoded = decode(dicom_file, max_pixels=BIG)

    assert decoded.notes["implant"] == IMPLANT
    assert input_notes(decoded.notes)["implant"] == IMPLANT
    np.testing.assert_array_equal(decoded.pixels, plain.pixels)  # noted, read the same


@pytest.mark.parametrize("value", ["NO", ""])
def test_no_implant_note_without_a_yes(dicom_file: Path, value: str) -> None:
    _rewrite(dicom_file, BreastImplantPresent=value)
    assert "implant" not in decode(dicom_file, max_pixels=BIG).notes


def _functional_groups(**groups: Dataset) -> list[Dataset]:
    """One functional-groups item holding each ``group`` macro as a one-item sequence."""
    item = Dataset()
    for keyword, macro in groups.items():
        setattr(item, keyword, [macro])
    return [item]


@pytest.mark.parametrize("where", ["SharedFunctionalGroupsSequence",
                                   "PerFrameFunctionalGroupsSequence"])
def test_breast_projection_laterality_and_spacing_come_from_functional_groups(
        dicom_file: Path, where: str) -> None:
    """Breast Projection X-Ray For Presentation keeps them there, not at the top level."""
    anatomy, measures = Dataset(), Dataset()
    anatomy.FrameLaterality, measures.PixelSpacing = "R", [0.1, 0.1]
    _rewrite(dicom_file, SOPClassUID="1.2.840.10008.5.1.4.1.1.13.1.4", ImageLaterality=None,
             **{where: _functional_groups(
                 FrameAnatomySequence=anatomy, PixelMeasuresSequence=measures)})
    header = read_header(dicom_file, pseudonymize=KEY)
    assert (header.laterality, header.pixel_spacing_mm) == (Laterality.RIGHT, (0.1, 0.1))
    assert decode(dicom_file, max_pixels=BIG).pixel_spacing_mm == (0.1, 0.1)
    # The top-level attributes, when present, win.
    _rewrite(dicom_file, ImageLaterality="L", ImagerPixelSpacing=[0.07, 0.07])
    header = read_header(dicom_file, pseudonymize=KEY)
    assert (header.laterality, header.pixel_spacing_mm) == (Laterality.LEFT, (0.07, 0.07))


def test_shared_functional_groups_win_over_the_first_frame(dicom_file: Path) -> None:
    shared, first = Dataset(), Dataset()
    shared.FrameLaterality, first.FrameLaterality = "L", "R"
    _rewrite(dicom_file, ImageLaterality=None,
             SharedFunctionalGroupsSequence=_functional_groups(FrameAnatomySequence=shared),
             PerFrameFunctionalGroupsSequence=_functional_groups(FrameAnatomySequence=first))
    assert read_header(dicom_file, pseudonymize=KEY).laterality is Laterality.LEFT


def test_spacing_orientation_burned_in_and_equipment(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImagerPixelSpacing=[0.07, 0.07], PixelSpacing=[0.065, 0.065],
             PatientOrientation=["P", "L"], BurnedInAnnotation="YES")
    header = read_header(dicom_file, pseudonymize=KEY)
    assert header.pixel_spacing_mm == (0.07, 0.07)  # detector plane first
    assert header.burned_in_annotation is True
    assert (header.manufacturer, header.manufacturer_model) == (
        "SYNTHETIC", "mammo synthetic generator")
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.pixel_spacing_mm == (0.07, 0.07)
    assert decoded.chest_wall_side == "right"
    _rewrite(dicom_file, ImagerPixelSpacing=None, PatientOrientation=["A", "R"])
    assert read_header(dicom_file, pseudonymize=KEY).pixel_spacing_mm == (0.065, 0.065)
    assert decode(dicom_file, max_pixels=BIG).chest_wall_side == "left"


@pytest.mark.parametrize("written, spacing, note", [
    ("0,085\\0,085", (0.085, 0.085), "'0,085\\0,085' read with a decimal comma"),
    ("0.1000", (0.1, 0.1), "holds one value: taken as square pixels"),
    ("0\\0   ", None, "'0\\0' is not two positive numbers: not used"),
    ("NaN\\NaN", None, "'NaN\\NaN' is not two positive numbers: not used"),
    ("-.1\\0.1", None, "'-.1\\0.1' is not two positive numbers: not used"),
])
def test_imager_pixel_spacing_as_written_is_read_or_noted_as_unknown(
        dicom_file: Path, written: str, spacing: tuple[float, float] | None, note: str) -> None:
    _rewrite(dicom_file, ImagerPixelSpacing="9" * len(written))
    _written_as(dicom_file, "9" * len(written), written)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.pixel_spacing_mm == spacing
    assert read_header(dicom_file, pseudonymize=KEY).pixel_spacing_mm == spacing
    assert decoded.notes["pixel_spacing"] == f"(0018,1164) Imager Pixel Spacing {note}"
    if spacing is None:  # Pixel Spacing, when there is one, is used instead
        _rewrite(dicom_file, PixelSpacing=[0.07, 0.07])
        assert decode(dicom_file, max_pixels=BIG).pixel_spacing_mm == (0.07, 0.07)


def test_a_pixel_spacing_no_mammography_system_has_is_refused(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImagerPixelSpacing=[50, 50])  # 50 um written as mm
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY,
             "mg.dcm states a pixel spacing of 50 x 50 mm ((0018,1164) Imager Pixel Spacing)",
             "Check the pixel spacing in the DICOM header")
    # Registration stores no such spacing (the worker then refuses the image, naming it).
    assert read_header(dicom_file, pseudonymize=KEY).pixel_spacing_mm is None
    _rewrite(dicom_file, ImagerPixelSpacing=[0.5, 0.5])  # digitised film, coarsely
    assert decode(dicom_file, max_pixels=BIG).pixel_spacing_mm == (0.5, 0.5)
    assert read_header(dicom_file, pseudonymize=KEY).pixel_spacing_mm == (0.5, 0.5)


# --- PatientID: a keyed pseudonym, or a refusal --------------------------------------------

def test_patient_id_without_a_key_is_refused_and_says_how_to_fix(dicom_file: Path) -> None:
    with pytest.raises(PseudonymKeyMissingError) as caught:
        read_header(dicom_file)
    assert caught.value.code is ErrorCode.NO_PSEUDONYM_KEY
    assert "MAMMO_PATIENT_ID_KEY" in caught.value.message
    assert PATIENT not in caught.value.message


def test_pseudonym_is_keyed_stable_and_never_the_id(dicom_file: Path) -> None:
    first = read_header(dicom_file, pseudonymize=KEY)
    assert first.patient_pseudonym == read_header(dicom_file, pseudonymize=KEY).patient_pseudonym
    other = read_header(dicom_file, pseudonymize=Pseudonymizer(b"another-site-key-0001"))
    assert first.patient_pseudonym and other.patient_pseudonym
    assert first.patient_pseudonym != other.patient_pseudonym
    assert PATIENT not in repr(first) and PATIENT not in str(first.patient_pseudonym)
    assert "hidden" in repr(KEY) and "unit-test-key" not in repr(KEY)


def test_empty_patient_id_needs_no_key(dicom_file: Path) -> None:
    _rewrite(dicom_file, PatientID="")
    assert read_header(dicom_file).patient_pseudonym is None


@pytest.mark.parametrize("changes", [
    {"WindowCenter": 1500, "WindowWidth": 900, "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": 700, "WindowWidth": 300, "VOILUTFunction": "LINEAR_EXACT"},
    {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 3000, "WindowWidth": 5000},
    {"PixelRepresentation": 1, "RescaleIntercept": 0, "WindowCenter": 0, "WindowWidth": 4096},
])
def test_display_values_match_pydicom_applied_pixel_by_pixel(dicom_file: Path,
                                                             changes: dict[str, object]) -> None:
    """The reader maps each distinct stored value once (a lookup table); that must equal
    pydicom's Modality LUT + VOI LUT applied to every pixel."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    _rewrite(dicom_file, **changes)
    ds = pydicom.dcmread(dicom_file)
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
    decoded = decode(dicom_file, max_pixels=BIG)
    shift = float(reference.min()) - float(decoded.pixels.min())
    np.testing.assert_allclose(decoded.pixels + shift, reference, rtol=0, atol=1e-3)


def test_pydicom_logs_no_header_value_while_reading(
        dicom_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    # pydicom logs its value-validation warnings besides warning them, quoting the value:
    # a patient's date or name would land in the worker's log.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rewrite_dicom(dicom_file, StudyDate="1961-03-02", Manufacturer="M" * 80)
    with caplog.at_level("DEBUG"):
        read_header(dicom_file, pseudonymize=KEY)
        decode(dicom_file, max_pixels=BIG)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
