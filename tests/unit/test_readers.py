"""Readers: every format we accept, and every way a file can be refused (with its code)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from shared.enums import ErrorCode, Laterality, View
from shared.errors import (
    ForProcessingImageError,
    ImageTooLargeError,
    InputError,
    MissingFileError,
    NotAMammogramError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedFormatError,
)
from shared.imaging.preprocess import to_unit_range
from shared.imaging.readers import READERS, ImageReader, decode, read_header, reader_for
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.bad_inputs import LEGEND, write_kind
from tests.helpers.dicom_edit import rewrite_dicom

BIG = 10**8
SOP_UID = "1.2.826.0.1.3680043.8.498.1"
SECRET_ID = "SECRET-PATIENT-4711"
PSEUDONYMIZE = Pseudonymizer(b"unit-test-key-not-a-secret")


@pytest.fixture
def pixels() -> np.ndarray:
    return synth_mammogram(np.random.default_rng(3), size=(128, 96), lesion=True)


@pytest.fixture
def dicom_file(tmp_path: Path, pixels: np.ndarray) -> Path:
    return write_dicom(tmp_path / "image.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.2",
                       sop_uid=SOP_UID, laterality=Laterality.RIGHT, view=View.MLO,
                       patient_id=SECRET_ID, accession="ACC42")


def _edit(path: Path, **changes: object) -> Path:
    rewrite_dicom(path, **changes)
    return path


def _refused(path: Path, error: type[InputError], code: ErrorCode, *phrases: str,
             max_pixels: int = BIG) -> InputError:
    with pytest.raises(error) as caught:
        decode(path, max_pixels=max_pixels)
    assert caught.value.code is code
    for phrase in phrases:
        assert phrase in caught.value.message
    assert SECRET_ID not in caught.value.message
    return caught.value


# --- DICOM ---------------------------------------------------------------------------------

def test_dicom_round_trip_keeps_pixels_and_header(dicom_file: Path, pixels: np.ndarray) -> None:
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.format == "dicom" and not decoded.invert
    assert decoded.max_value == 4095
    # The written full-range window maps every stored value onto itself.
    np.testing.assert_allclose(decoded.pixels, pixels, atol=1e-3)

    header = read_header(dicom_file, pseudonymize=PSEUDONYMIZE)
    assert header.identity == f"sop:{SOP_UID}"
    assert header.patient_pseudonym == PSEUDONYMIZE(SECRET_ID)
    assert (header.laterality, header.view) == (Laterality.RIGHT, View.MLO)
    assert (header.rows, header.columns) == (128, 96)
    assert header.accession_number == "ACC42" and header.study_date == "20000101"
    assert SECRET_ID not in repr(header)


@pytest.mark.parametrize("syntax", [
    pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian, pydicom.uid.RLELossless,
])
def test_syntaxes_pydicom_decodes_natively(dicom_file: Path, pixels: np.ndarray,
                                           syntax: pydicom.uid.UID) -> None:
    ds = pydicom.dcmread(dicom_file)
    if syntax == pydicom.uid.RLELossless:
        ds.compress(syntax)
        ds.save_as(dicom_file)
    elif syntax == pydicom.uid.ExplicitVRBigEndian:
        ds.PixelData = pixels.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(dicom_file, ds, implicit_vr=False, little_endian=False,
                         force_encoding=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(dicom_file)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["transfer_syntax"] == syntax.name
    np.testing.assert_allclose(decoded.pixels, pixels, atol=1e-3)


def test_voi_lut_is_preferred_over_the_window(dicom_file: Path, pixels: np.ndarray) -> None:
    ds = pydicom.dcmread(dicom_file)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", [value // 2 for value in range(4096)])  # half brightness
    ds.VOILUTSequence = [item]
    ds.RescaleSlope = 1.0  # float rescale output must still index the LUT
    ds.save_as(dicom_file)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"].startswith("VOI LUT 1 of 1") and decoded.max_value == 4095
    np.testing.assert_array_equal(decoded.pixels, pixels // 2)


def test_dicom_without_extension_is_sniffed(dicom_file: Path) -> None:
    bare = dicom_file.with_name("IM000001")
    shutil.copy(dicom_file, bare)
    assert reader_for(bare).format_name == "dicom"
    assert decode(bare, max_pixels=BIG).pixels.shape == (128, 96)


def test_monochrome1_is_flagged_and_inverts_to_the_same_image(
    tmp_path: Path, dicom_file: Path, pixels: np.ndarray,
) -> None:
    mono1 = write_dicom(tmp_path / "m1.dcm", pixels, study_uid="1.2.3", sop_uid="1.2.3.4",
                        laterality=Laterality.LEFT, view=View.CC, monochrome1=True)
    inverted = decode(mono1, max_pixels=BIG)
    assert inverted.invert
    np.testing.assert_allclose(to_unit_range(inverted),
                               to_unit_range(decode(dicom_file, max_pixels=BIG)), atol=1e-6)


def test_header_falls_back_to_content_hash_without_sop_uid(dicom_file: Path) -> None:
    _edit(dicom_file, SOPInstanceUID=None)
    assert read_header(dicom_file, pseudonymize=PSEUDONYMIZE).identity.startswith("sha256:")


@pytest.mark.parametrize("changes, phrase", [
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2.1"}, "(0008,0016)"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "(0008,0068)"),
])
def test_for_processing_is_refused(dicom_file: Path, changes: dict[str, str],
                                   phrase: str) -> None:
    _edit(dicom_file, **changes)
    _refused(dicom_file, ForProcessingImageError, ErrorCode.FOR_PROCESSING, phrase)


@pytest.mark.parametrize("changes, phrase", [
    ({"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "(0008,0060)"),
    ({"NumberOfFrames": 2}, "(0028,0008)"),
    # The Modality and the SOP class must both allow a mammogram: a contradiction refuses.
    ({"Modality": "CT"}, "Modality is 'CT' (SOP Class Digital Mammography"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "CT Image Storage"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.50"}, "Mammography CAD SR Storage"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "Encapsulated PDF Storage"),
])
def test_non_mammograms_are_refused(dicom_file: Path, changes: dict[str, object],
                                    phrase: str) -> None:
    _edit(dicom_file, **changes)
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY, phrase)


@pytest.mark.parametrize("kind, phrase", [
    ("dicom_dicomdir", "is a DICOMDIR (a media index), not an image ((0002,0002)"),
    ("dicom_cad_report", "is a Structured Report (Mammography CAD SR), not an image"),
    ("dicom_presentation_state", "is a Presentation State (Grayscale Softcopy"),
    ("dicom_key_objects", "is a Key Object Selection document"),
])
def test_a_non_image_object_is_named_not_called_an_image_without_rows(
        tmp_path: Path, kind: str, phrase: str) -> None:
    path = write_kind(next(k for k in LEGEND if k.name == kind), tmp_path / "object.dcm", 7)
    message = _refused(path, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY, phrase).message
    assert "Rows" not in message


def test_secondary_capture_of_other_modality_is_accepted_with_a_note(dicom_file: Path) -> None:
    _edit(dicom_file, Modality="RG", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    assert "RG" in decode(dicom_file, max_pixels=BIG).notes["modality"]


@pytest.mark.parametrize("modality, sop_class", [
    ("DX", "1.2.840.10008.5.1.4.1.1.1.1"), ("CR", "1.2.840.10008.5.1.4.1.1.1"),
    ("OT", "1.2.840.10008.5.1.4.1.1.7"),
])
@pytest.mark.parametrize("body_part", ["CHEST", "HAND", "L SPINE", "CHEST_ABDOMEN"])
def test_radiograph_of_another_body_part_is_not_taken_on_trust(
        dicom_file: Path, modality: str, sop_class: str, body_part: str) -> None:
    _edit(dicom_file, Modality=modality, SOPClassUID=sop_class, BodyPartExamined=body_part)
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY,
             f"(0018,0015) Body Part Examined is '{body_part.upper()}', not BREAST")


# The breast in the words sites write: Spanish/Portuguese, Italian, French, German, Dutch.
@pytest.mark.parametrize("body_part", [None, "", "BREAST", "MAMMO", "LBREAST", "MAMA", "SENO",
                                       "SEIN", "BRUST", "BORST", "BRST"])
def test_radiograph_of_the_breast_or_of_no_stated_part_is_taken_on_trust(
        dicom_file: Path, body_part: str | None) -> None:
    _edit(dicom_file, Modality="DX", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1")
    if body_part is not None:
        _edit(dicom_file, BodyPartExamined=body_part)
    assert "on trust" in decode(dicom_file, max_pixels=BIG).notes["modality"]


def test_compressed_syntax_over_raw_pixel_data_names_the_mismatch(dicom_file: Path) -> None:
    # pydicom will not write such a file, so the declared syntax is patched in place (the
    # two UIDs have the same length).
    data = dicom_file.read_bytes()
    explicit, rle = (str(uid).encode() for uid in (pydicom.uid.ExplicitVRLittleEndian,
                                                   pydicom.uid.RLELossless))
    assert data.count(explicit + b"\0") == 1
    dicom_file.write_bytes(data.replace(explicit + b"\0", rle + b"\0"))
    _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE,
             "RLE Lossless", "holds raw values", "wrong transfer syntax")


def test_video_transfer_syntax_is_not_a_mammogram(dicom_file: Path) -> None:
    ds = pydicom.dcmread(dicom_file)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(dicom_file, enforce_file_format=True)
    _refused(dicom_file, NotAMammogramError, ErrorCode.NOT_MAMMOGRAPHY, "is a video", "MPEG2")


def test_private_sop_class_is_judged_by_its_modality(dicom_file: Path) -> None:
    _edit(dicom_file, SOPClassUID="1.2.826.0.1.3680043.8.498.777")  # not in the standard
    assert decode(dicom_file, max_pixels=BIG).pixels.shape == (128, 96)


def test_float_pixel_data_is_named_not_called_missing(dicom_file: Path) -> None:
    ds = pydicom.dcmread(dicom_file)
    del ds.PixelData
    ds.FloatPixelData = np.zeros(128 * 96, np.float32).tobytes()
    ds.BitsAllocated = 32
    ds.save_as(dicom_file)
    _refused(dicom_file, UnreadableImageError, ErrorCode.UNREADABLE, "floating-point",
             "(7FE0,0008)")


@pytest.mark.parametrize("implicit", [True, False])
def test_dataset_without_preamble_or_meta_header_is_read(
        tmp_path: Path, dicom_file: Path, pixels: np.ndarray, implicit: bool) -> None:
    # Older PACS exports write the bare dataset: no 128-byte preamble, no "DICM", no group
    # 0002, so no declared transfer syntax; pydicom finds the encoding from the elements.
    ds = pydicom.dcmread(dicom_file)
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, implicit
    write_dataset(raw, ds)
    path = tmp_path / "bare"
    path.write_bytes(raw.getvalue())
    header = read_header(path, pseudonymize=PSEUDONYMIZE)
    assert header.format == "dicom" and header.identity == f"sop:{SOP_UID}"
    assert (header.laterality, header.view) == (Laterality.RIGHT, View.MLO)
    decoded = decode(path, max_pixels=BIG)
    np.testing.assert_array_equal(decoded.pixels, decode(dicom_file, max_pixels=BIG).pixels)
    expected = "Implicit VR Little Endian" if implicit else "Explicit VR Little Endian"
    assert decoded.notes["transfer_syntax"] == expected


def test_colour_rgb_dicom_is_refused(dicom_file: Path) -> None:
    rgb = np.zeros((128, 96, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red: grey stored as RGB would be merged (test_readers_dicom.py)
    _edit(dicom_file, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
          BitsAllocated=8, BitsStored=8, HighBit=7, PixelData=rgb.tobytes())
    _refused(dicom_file, NotAMammogramError, ErrorCode.UNEXPECTED_CHANNELS, "colour image")


def test_truncated_pixel_data_is_reported_but_header_still_reads(dicom_file: Path) -> None:
    data = dicom_file.read_bytes()
    dicom_file.write_bytes(data[:-5000])
    error = _refused(dicom_file, TruncatedImageError, ErrorCode.TRUNCATED, "(7FE0,0010)",
                     f"{128 * 96 * 2:,} expected")
    assert "bytes" in error.message
    # The producer's header read never touches the pixels, so it still succeeds.
    assert read_header(dicom_file, pseudonymize=PSEUDONYMIZE).identity == f"sop:{SOP_UID}"


def test_too_large_is_refused_before_decoding(dicom_file: Path) -> None:
    _refused(dicom_file, ImageTooLargeError, ErrorCode.TOO_LARGE, "96 x 128",
             max_pixels=1000)


@pytest.mark.parametrize("body", [b"", b"\x02\x00\x00\x00UL\x04\x00\x10"])
def test_damaged_dicom_is_unreadable(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + body)
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE, "bad.dcm")


# --- raster formats -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_8_and_16_bit(tmp_path: Path, dtype: type[np.integer], top: int) -> None:
    image = np.random.default_rng(1).integers(0, top, (80, 70)).astype(dtype)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), image)
    decoded = decode(path, max_pixels=BIG)
    assert decoded.format == "png" and decoded.max_value == top
    np.testing.assert_array_equal(decoded.pixels, image)
    header = read_header(path)
    assert header.identity.startswith("sha256:") and len(header.identity) == 7 + 64
    assert (header.rows, header.columns) == (80, 70)


def test_colour_png_becomes_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), np.full((70, 80, 3), 100, dtype=np.uint8))
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == (70, 80) and int(decoded.pixels[0, 0]) == 100


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32, np.float64])
@pytest.mark.parametrize("channels", [3, 4])
def test_grey_tiff_stored_as_colour_in_any_depth_is_merged(
        tmp_path: Path, pixels: np.ndarray, dtype: type[np.number], channels: int) -> None:
    # OpenCV's colour conversion takes only 8-bit, 16-bit unsigned and 32-bit float; a grey
    # exported as signed 16-bit or 32-bit RGB(A) TIFF used to fail as an internal error.
    grey = (pixels.astype(np.float64) / 4096).astype(dtype) if dtype is np.float64 \
        else pixels.astype(dtype)
    path = tmp_path / "grey.tif"
    assert cv2.imwrite(str(path), np.dstack([grey] * channels))
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.dtype == np.dtype(dtype) and decoded.pixels.shape == pixels.shape
    np.testing.assert_allclose(decoded.pixels, grey, rtol=1e-12, atol=1)
    assert decoded.notes["colour"] == "grey stored as colour channels, merged"


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1.0), (np.float32, 1 / 4095),
                                          (np.int32, 1.0), (np.uint32, 16.0),
                                          (np.int16, 1.0)])
def test_tiff_without_a_conventional_range_is_read_over_its_own(
        tmp_path: Path, pixels: np.ndarray, dtype: type[np.number], scale: float) -> None:
    # Raw counts in a float or 32-bit TIFF used to be clipped to [0, 1] (almost binary) or
    # divided by 2**31 (refused as blank); a float image in 0-1 keeps that convention.
    stored = (pixels.astype(np.float64) * scale).astype(dtype)
    if dtype is np.int16:
        stored = (stored - 2048).astype(dtype)  # a signed offset, half the values negative
    path = tmp_path / "raw.tif"
    assert cv2.imwrite(str(path), stored)
    decoded = decode(path, max_pixels=BIG)
    unit = to_unit_range(decoded)
    in_unit_range = dtype is np.float32 and scale < 1
    expected = stored if in_unit_range else \
        (stored - stored.min()) / float(stored.max() - stored.min())
    np.testing.assert_allclose(unit, expected, atol=1e-5)
    assert ("range" in decoded.notes) is not in_unit_range


def _tiff_directories(data: bytes) -> list[int]:
    """Offsets of a little-endian classic TIFF's image file directories."""
    offsets, offset = [], int.from_bytes(data[4:8], "little")
    while offset:
        offsets.append(offset)
        count = int.from_bytes(data[offset:offset + 2], "little")
        offset = int.from_bytes(data[offset + 2 + 12 * count:offset + 6 + 12 * count], "little")
    return offsets


def _set_tag(data: bytearray, directory: int, tag: int, value: int) -> None:
    """Overwrite an existing integer tag of a little-endian directory with a LONG ``value``."""
    for entry in range(int.from_bytes(data[directory:directory + 2], "little")):
        at = directory + 2 + 12 * entry
        if int.from_bytes(data[at:at + 2], "little") == tag:
            data[at + 2:at + 4] = (4).to_bytes(2, "little")  # LONG
            data[at + 8:at + 12] = value.to_bytes(4, "little")
            return
    raise AssertionError(f"tag {tag} not in the directory at {directory}")


def _claim_size(data: bytearray, directory: int, rows: int, columns: int) -> None:
    _set_tag(data, directory, 256, columns)
    _set_tag(data, directory, 257, rows)


@pytest.mark.parametrize("page", [0, 1])
def test_tiff_page_too_large_is_refused_from_its_directory(
        tmp_path: Path, pixels: np.ndarray, page: int) -> None:
    # Any page, not only the first: OpenCV would allocate it before its own cap applies.
    path = tmp_path / "bomb.tif"
    assert cv2.imwritemulti(str(path), [pixels, pixels[::4, ::4].copy()])
    data = bytearray(path.read_bytes())
    _claim_size(data, _tiff_directories(bytes(data))[page], 60_000, 60_000)
    path.write_bytes(bytes(data))
    _refused(path, ImageTooLargeError, ErrorCode.TOO_LARGE, "60000 x 60000")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_padding_after_the_end_marker_is_not_truncation(
        tmp_path: Path, pixels: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"padded{suffix}"
    cv2.imwrite(str(path), (pixels >> 4).astype(np.uint8))
    path.write_bytes(path.read_bytes() + bytes(5000))
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == pixels.shape


def test_jpeg_and_tiff(tmp_path: Path, pixels: np.ndarray) -> None:
    jpeg, tiff = tmp_path / "x.jpg", tmp_path / "x.tif"
    cv2.imwrite(str(jpeg), (pixels >> 4).astype(np.uint8))
    cv2.imwrite(str(tiff), pixels)
    decoded_jpeg = decode(jpeg, max_pixels=BIG)
    assert decoded_jpeg.format == "jpeg" and decoded_jpeg.max_value == 255
    assert np.abs(decoded_jpeg.pixels.astype(int) - (pixels >> 4)).mean() < 3
    decoded_tiff = decode(tiff, max_pixels=BIG)
    assert decoded_tiff.format == "tiff" and decoded_tiff.max_value == 65535
    np.testing.assert_array_equal(decoded_tiff.pixels, pixels)


@pytest.mark.parametrize("preview_first", [False, True])
def test_tiff_with_a_preview_page_reads_the_full_size_image(
        tmp_path: Path, pixels: np.ndarray, preview_first: bool) -> None:
    # Scanners also write the thumbnail as page 1; refusing that said "page 2 is ... like
    # the first", of a first page four times smaller.
    path = tmp_path / "x.tif"
    preview = cv2.resize(pixels, (pixels.shape[1] // 4, pixels.shape[0] // 4))
    pages = [preview, pixels] if preview_first else [pixels, preview]
    assert cv2.imwritemulti(str(path), pages)
    decoded = decode(path, max_pixels=BIG)
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.notes["pages"] == "1 reduced-resolution TIFF page(s) ignored"


def test_tiff_holding_several_images_is_refused_not_truncated_to_one(
        tmp_path: Path, pixels: np.ndarray) -> None:
    path = tmp_path / "stack.tif"
    preview = cv2.resize(pixels, (pixels.shape[1] // 4, pixels.shape[0] // 4))
    # A preview first, then a second full-size view: the second view is what matters.
    assert cv2.imwritemulti(str(path), [pixels, preview, np.flipud(pixels).copy()])
    with pytest.raises(NotAMammogramError, match="page 3 of 3 is 96 x 128 px") as refused:
        decode(path, max_pixels=BIG)
    assert refused.value.code == ErrorCode.NOT_MAMMOGRAPHY


def _min_is_white_tiff(path: Path, stored: np.ndarray) -> Path:
    """``stored`` as an uncompressed TIFF whose PhotometricInterpretation says MinIsWhite
    (OpenCV writes MinIsBlack; the tag is patched in place)."""
    assert cv2.imwrite(str(path), stored, [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    data = bytearray(path.read_bytes())
    _set_tag(data, _tiff_directories(bytes(data))[0], 262, 0)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_min_is_white_tiff_is_inverted_exactly_once(tmp_path: Path, pixels: np.ndarray,
                                                    dtype: type[np.number]) -> None:
    # PhotometricInterpretation 0: OpenCV inverts 8-bit pages itself, never 16-bit or
    # float ones, which were scored as negatives.
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    stored = (pixels.astype(np.float64) / 4095 * top).astype(dtype)
    path = _min_is_white_tiff(tmp_path / "white_is_zero.tif", stored)
    unit = to_unit_range(decode(path, max_pixels=BIG))
    np.testing.assert_allclose(unit, 1 - stored.astype(np.float64) / top, atol=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_show_it(
        tmp_path: Path, pixels: np.ndarray, fmt: str, orientation: int) -> None:
    # libjpeg and OpenCV's unchanged read ignore EXIF Orientation; a phone or viewer export
    # rotated 90 degrees was scored lying on its side (TIFF's is applied by OpenCV).
    path = tmp_path / f"turned.{fmt.lower()}"
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(path, format=fmt,
                                                         exif=exif.tobytes(), quality=100)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path))).astype(int)
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == upright.shape
    assert np.abs(decoded.pixels.astype(int) - upright).mean() < 1
    assert ("orientation" in decoded.notes) is (orientation != 1)


def test_float_tiff_with_nan_background_reads_it_as_the_darkest_value(
        tmp_path: Path, pixels: np.ndarray) -> None:
    stored = pixels.astype(np.float32)
    stored[:, :20] = np.nan  # "no data" outside the scanned film
    stored[0, 30] = np.inf
    path = tmp_path / "nan.tif"
    assert cv2.imwrite(str(path), stored)
    decoded = decode(path, max_pixels=BIG)
    assert np.isfinite(decoded.pixels).all()
    finite = pixels[:, 20:].astype(np.float32)
    assert float(decoded.pixels[0, 0]) == decoded.min_value == float(finite.min())
    assert decoded.notes["non_finite"].startswith(f"{128 * 20 + 1:,} NaN or infinite")
    assert cv2.imwrite(str(path), np.full_like(stored, np.nan))
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE, "nan.tif", "every value is NaN",
             "Export the image again")


def test_nan_pixels_of_a_min_is_white_tiff_are_dark_as_displayed(
        tmp_path: Path, pixels: np.ndarray) -> None:
    # Stored white-is-zero, the darkest value is the top one: NaN set to the stored minimum
    # became white after the inversion (a black background turned white, specks inside
    # the breast looked like calcifications).
    stored = (1 - pixels.astype(np.float32) / 4095).astype(np.float32)
    stored[:, :20] = np.nan
    path = _min_is_white_tiff(tmp_path / "white_is_zero_nan.tif", stored)
    unit = to_unit_range(decode(path, max_pixels=BIG))
    assert float(unit[:, :20].max()) == 0.0
    assert float(unit[:, 20:].max()) > 0.5


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_png_and_jpeg(tmp_path: Path, pixels: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), (pixels >> 4).astype(np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(path, TruncatedImageError, ErrorCode.TRUNCATED, "truncated")


@pytest.mark.parametrize("colour", [False, True])
def test_jpeg_with_corrupt_scan_data_is_refused_not_scored(
        tmp_path: Path, pixels: np.ndarray, colour: bool) -> None:
    # Its markers are all intact (EOI included), so only the decoder can tell: OpenCV
    # returns the image with grey blocks and prints libjpeg's warning.
    grey = (pixels >> 4).astype(np.uint8)
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), np.dstack([grey] * 3) if colour else grey)
    data = path.read_bytes()
    data = data[:len(data) // 2] + data[len(data) // 2 + len(data) // 8:]  # a lost block
    path.write_bytes(data)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE,
             "damaged JPEG: its compressed image data is corrupt")


def test_a_harmless_libjpeg_warning_keeps_the_image(tmp_path: Path, pixels: np.ndarray) -> None:
    # Some converters write a baseline scan header ending at coefficient 0 instead of 63:
    # libjpeg warns ("Invalid SOS parameters for sequential JPEG") and decodes it whole.
    grey = (pixels >> 4).astype(np.uint8)
    path = tmp_path / "odd-sos.jpg"
    cv2.imwrite(str(path), grey)
    data = bytearray(path.read_bytes())
    sos = data.index(b"\xff\xda")
    components = data[sos + 4]
    data[sos + 5 + 2 * components + 1] = 0  # Se: 63 -> 0
    path.write_bytes(bytes(data))
    expected = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decode(path, max_pixels=BIG).pixels, expected)


def _pgm(image: np.ndarray, maxval: int, ascii_: bool = False) -> bytes:
    rows, columns = image.shape
    if ascii_:
        body = " ".join(str(v) for v in image.ravel()).encode()
        return f"P2\n# synthetic\n{columns} {rows}\n{maxval}\n".encode() + body
    sample = ">u2" if maxval > 255 else "u1"
    return (f"P5\n# synthetic\n{columns} {rows}\n{maxval}\n".encode()
            + image.astype(sample).tobytes())


# Plain (ASCII) PGMs with a maxval below 255 were rescaled by OpenCV to 0-255, then divided
# by maxval and clipped: maxval 63 had 17 grey levels left, maxval 200 was saturated.
@pytest.mark.parametrize("maxval, ascii_", [(255, False), (4095, False), (4095, True),
                                            (63, True), (200, True), (255, True)])
def test_pgm(tmp_path: Path, maxval: int, ascii_: bool) -> None:
    image = np.random.default_rng(2).integers(0, maxval + 1, (66, 65))
    path = tmp_path / "x.pgm"
    path.write_bytes(_pgm(image, maxval, ascii_))
    decoded = decode(path, max_pixels=BIG)
    assert decoded.format == "pgm" and decoded.max_value == maxval
    np.testing.assert_array_equal(decoded.pixels, image)
    assert (read_header(path).rows, read_header(path).columns) == (66, 65)


@pytest.mark.parametrize("ascii_", [False, True])
def test_truncated_pgm(tmp_path: Path, ascii_: bool) -> None:
    path = tmp_path / "x.pgm"
    path.write_bytes(_pgm(np.ones((66, 65), dtype=int) * 7, 4095, ascii_)[:-200])
    _refused(path, TruncatedImageError, ErrorCode.TRUNCATED, "expected")


def test_plain_pgm_reads_comments_and_clips_values_above_maxval(tmp_path: Path) -> None:
    # A stray value above maxval (one in 200) is clipped; many are refused (next test).
    path = tmp_path / "x.pgm"
    rest = " ".join(["99"] * 196).encode()
    path.write_bytes(b"P2\n20 10\n100\n0 1 # a comment\n 2\n150 " + rest)
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == (10, 20)
    np.testing.assert_array_equal(decoded.pixels[0, :5], [0, 1, 2, 100, 99])
    assert decoded.pixels.dtype == np.uint8 and decoded.max_value == 100


@pytest.mark.parametrize("stored, ascii_, cause", [
    # 16-bit values written least significant byte first
    ("little_endian", False, "its 16-bit values fit once their two bytes are swapped: the file "
                             "was written least significant byte first"),
    # garbage in the 4 high bits a 12-bit maxval leaves unused
    ("high_bits", False, "its header's maxval is wrong or its pixel data is damaged"),
    ("high_bits", True, "its header's maxval is wrong or its pixel data is damaged"),
])
def test_pgm_whose_values_mostly_exceed_its_maxval_names_that(
        tmp_path: Path, pixels: np.ndarray, stored: str, ascii_: bool, cause: str) -> None:
    # Scaled by maxval 4095 these were clipped to white, and the image refused as "random
    # noise" (neighbouring pixels almost unrelated): true, but no help finding the cause.
    path = tmp_path / "x.pgm"
    if stored == "little_endian":
        path.write_bytes(b"P5\n96 128\n4095\n" + pixels.astype("<u2").tobytes())
    else:
        noise = np.random.default_rng(5).integers(1, 16, pixels.shape) << 12
        path.write_bytes(_pgm(pixels | noise, 4095, ascii_))
    refused = _refused(path, UnreadableImageError, ErrorCode.UNREADABLE,
                       "x.pgm is a PGM whose pixel values exceed the maximum its header "
                       "declares (maxval 4095) on ", cause)
    assert "random noise" not in refused.message


def test_pgm_with_a_label_above_its_maxval_is_still_read(tmp_path: Path,
                                                         pixels: np.ndarray) -> None:
    # A burned-in label brighter than maxval (3 % of the image) is clipped to white, as a
    # few hot pixels are: not a sign that the values or the header are wrong.
    labelled = pixels.copy()
    labelled[:20, :20] = 60000
    path = tmp_path / "x.pgm"
    path.write_bytes(_pgm(labelled, 4095))
    decoded = decode(path, max_pixels=BIG)
    assert decoded.max_value == 4095
    np.testing.assert_array_equal(decoded.pixels, labelled)


def test_plain_pgm_with_a_stray_character_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.pgm"
    path.write_bytes(b"P2\n2 2\n255\n0 1 -7 3\n")
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE, "b'-'")


def test_plain_pgm_is_parsed_without_an_object_per_pixel(tmp_path: Path) -> None:
    # Counting values with bytes.split() made one Python object per pixel: 55 bytes a pixel
    # at peak (a 13.6 Mpx P2 took 600 MB). The file read, its values text and one int64
    # per value are about 20.
    image = np.random.default_rng(4).integers(0, 4096, (1000, 1000))
    path = tmp_path / "x.pgm"
    path.write_bytes(_pgm(image, 4095, ascii_=True))
    tracemalloc.start()
    try:
        decoded = decode(path, max_pixels=BIG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(decoded.pixels, image)
    assert peak < 30 * image.size, f"{peak / image.size:.0f} bytes per pixel at peak"


def test_raster_too_large(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.zeros((80, 70), dtype=np.uint8))
    _refused(path, ImageTooLargeError, ErrorCode.TOO_LARGE, "70 x 80", max_pixels=100)


# --- not images at all --------------------------------------------------------------------

def test_text_file_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n")
    _refused(path, UnsupportedFormatError, ErrorCode.NOT_DICOM_OR_IMAGE,
             "not a DICOM, PNG, JPEG, TIFF or PGM file")


@pytest.mark.parametrize("name", ["image.dcm.gz", "image.png.gz"])
def test_gzip_compressed_file_is_named_as_such(tmp_path: Path, pixels: np.ndarray,
                                              name: str) -> None:
    path = tmp_path / name
    with gzip.open(path, "wb") as packed:
        packed.write(cv2.imencode(".png", pixels)[1].tobytes())
    refused = _refused(path, UnsupportedFormatError, ErrorCode.NOT_DICOM_OR_IMAGE,
                       f"{name} is gzip-compressed", "decompress it first")
    assert "match none" not in refused.message


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    _refused(tmp_path / "empty.dcm", UnreadableImageError, ErrorCode.UNREADABLE, "empty")
    _refused(tmp_path / "gone.dcm", MissingFileError, ErrorCode.MISSING_FILE, "gone.dcm")
    with pytest.raises(MissingFileError):
        read_header(tmp_path / "gone.dcm")
    _refused(tmp_path, UnreadableImageError, ErrorCode.UNREADABLE, "folder")


def test_every_reader_follows_the_contract() -> None:
    assert all(isinstance(reader, ImageReader) for reader in READERS)
    assert {r.format_name for r in READERS} == {"dicom", "png", "jpeg", "tiff", "pgm"}


def test_importing_readers_never_imports_tensorflow() -> None:
    code = "import sys, shared.imaging.readers; assert 'tensorflow' not in sys.modules"
    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- real files (../shared/data, present in CI, absent in a fresh clone) --------------------
