"""Which bits of a DICOM's stored words are the pixel value (Bits Stored, High Bit), and an
image its own header blanks (a window outside its values, padding over every pixel).

pydicom keeps the lowest Bits Stored bits of each word whatever High Bit says: a top-aligned
image (12 bits in bits 4-15) or one whose header understates its depth came out as a banded
image, passed every check and was scored. Garbage above the value (an overlay plane, noise)
must still be ignored, and every real vendor DICOM must read as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.enums import ErrorCode, Laterality, View
from shared.errors import EmptyImageError, UnreadableImageError
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode
from shared.imaging.readers import dicom_bits as bits
from shared.imaging.readers.dicom import _plugin_for
from shared.synthetic import synth_mammogram, write_dicom
from tests.conftest import SHARED_DATA
from tests.unit.test_readers_dicom import _refused
from worker.decoding import input_notes

BIG = 10**8
NOTE = bits.NOTE_KEY


@pytest.fixture
def pixels() -> np.ndarray:
    return synth_mammogram(np.random.default_rng(11), size=(320, 256))


def _written(tmp_path: Path, name: str, words: np.ndarray, *, remove: tuple[str, ...] = (),
             **header: int) -> Path:
    """A synthetic mammogram whose pixel words are ``words`` (uint16 or int16) and whose
    header has the elements given; no window."""
    path = write_dicom(tmp_path / name, np.zeros(words.shape, np.uint16), study_uid="1.2.3",
                       sop_uid=f"1.2.3.{len(name)}", laterality=Laterality.LEFT, view=View.CC)
    ds = pydicom.dcmread(path)
    for keyword in ("WindowCenter", "WindowWidth", *remove):
        delattr(ds, keyword)
    ds.PixelData = np.ascontiguousarray(words).astype(words.dtype.newbyteorder("<")).tobytes()
    for keyword, value in header.items():
        if keyword.startswith("PixelPadding"):  # pydicom cannot write "US or SS" itself
            ds.add_new(keyword, "US", value)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _plain(tmp_path: Path, pixels: np.ndarray) -> Path:
    return _written(tmp_path, "plain.dcm", pixels)


def _same_image(path: Path, reference: Path) -> None:
    decoded, expected = decode(path, max_pixels=BIG), decode(reference, max_pixels=BIG)
    np.testing.assert_array_equal(decoded.pixels, expected.pixels)
    assert decoded.max_value == expected.max_value


# --- High Bit ------------------------------------------------------------------------------

def test_top_aligned_values_are_read_from_the_bits_high_bit_names_with_a_note(
        tmp_path: Path, pixels: np.ndarray) -> None:
    """12 bits in bits 4-15 (HighBit 15): read as the plain image, and the note says so."""
    top = _written(tmp_path, "top.dcm", pixels << 4, HighBit=15)
    _same_image(top, _plain(tmp_path, pixels))
    decoded = decode(top, max_pixels=BIG)
    assert decoded.notes[NOTE] == (
        "(0028,0102) High Bit 15 with (0028,0101) Bits Stored 12: values read from bits 4 to "
        "15 (the older top-aligned layout), the bits below ignored")
    assert NOTE in input_notes(decoded.notes)  # shown with the result
    # Garbage in the bits below the value changes nothing.
    noisy = (pixels << 4) | np.random.default_rng(1).integers(0, 16, pixels.shape, np.uint16)
    _same_image(_written(tmp_path, "noisy.dcm", noisy, HighBit=15), top)


def test_top_aligned_signed_values_are_sign_extended(tmp_path: Path,
                                                     pixels: np.ndarray) -> None:
    signed = (pixels.astype(np.int32) - 2048).astype(np.int16)
    plain = _written(tmp_path, "signed.dcm", signed, PixelRepresentation=1)
    top = _written(tmp_path, "signed_top.dcm", (signed.astype(np.int32) * 16).astype(np.int16),
                   PixelRepresentation=1, HighBit=15)
    _same_image(top, plain)
    # 12 bits at 2-13, the two bits above them garbage: shifted down, then sign-extended.
    middle = ((signed.astype(np.int32) & 0xFFF) << 2 | 0xC000).astype(np.uint16)
    _same_image(_written(tmp_path, "signed_mid.dcm", middle.view(np.int16),
                         PixelRepresentation=1, HighBit=13), plain)


def test_a_high_bit_that_every_word_contradicts_is_taken_as_wrong_with_a_note(
        tmp_path: Path, pixels: np.ndarray) -> None:
    """Words all within the lowest 12 bits under HighBit 15: shifting would keep 8 bits of
    the image; read as before (the lowest 12 bits), and said."""
    wrong = _written(tmp_path, "wrong.dcm", pixels, HighBit=15)
    _same_image(wrong, _plain(tmp_path, pixels))
    assert "as if High Bit were 11" in decode(wrong, max_pixels=BIG).notes[NOTE]


@pytest.mark.parametrize("high", [16, 31, 10, -1])
def test_a_high_bit_no_layout_allows_is_refused_naming_it(tmp_path: Path, pixels: np.ndarray,
                                                          high: int) -> None:
    path = _written(tmp_path, "impossible.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00280102, "SS" if high < 0 else "US", high)
    ds.save_as(path)
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE,
             f"impossible.dcm: (0028,0102) High Bit is {high}, which no layout allows with "
             "(0028,0101) Bits Stored 12 and (0028,0100) Bits Allocated 16",
             "must be 11 to 15", "export the image again")


def test_a_missing_high_bit_reads_as_before(tmp_path: Path, pixels: np.ndarray) -> None:
    path = _written(tmp_path, "nohigh.dcm", pixels, remove=("HighBit",))
    _same_image(path, _plain(tmp_path, pixels))
    assert NOTE not in decode(path, max_pixels=BIG).notes


# --- words past Bits Stored: the image going on, or garbage ---------------------------------

@pytest.mark.parametrize("stored", [10, 8])
def test_an_image_whose_header_understates_its_depth_is_refused(tmp_path: Path,
                                                                pixels: np.ndarray,
                                                                stored: int) -> None:
    """12-bit values under Bits Stored 10 or 8: masked, they were a banded image scored
    'normal'; the values run on smoothly past the declared range, so it is refused."""
    path = _written(tmp_path, "deep.dcm", pixels, BitsStored=stored, HighBit=stored - 1)
    top = int(pixels.max())
    _refused(path, UnreadableImageError, ErrorCode.UNREADABLE,
             f"deep.dcm: its pixel values run from {int(pixels.min()):,} to {top:,} "
             f"({top.bit_length()} bits), past the 0 to {2**stored - 1:,} that (0028,0101) "
             f"Bits Stored {stored} declares",
             "the header understates the bit depth", "Fix the export")


def _overlay(pixels: np.ndarray) -> np.ndarray:
    words = pixels.copy()
    words[40:120, 30:200] |= 0x8000  # an overlay plane in bit 15, a box of it
    words[200:204, :] |= 0x1000  # and a line in bit 12, just above the value
    return words


@pytest.mark.parametrize("garbage", [
    lambda p: p | np.random.default_rng(0).integers(0, 16, p.shape, np.uint16) << 12,
    _overlay,
    lambda p: p | 0xF000,  # every unused bit set
], ids=["random-high-nibble", "overlay-planes", "all-ones"])
def test_garbage_above_bits_stored_is_ignored_silently(tmp_path: Path, pixels: np.ndarray,
                                                       garbage: object) -> None:
    assert callable(garbage)
    path = _written(tmp_path, "garbage.dcm", garbage(pixels))
    _same_image(path, _plain(tmp_path, pixels))
    assert NOTE not in decode(path, max_pixels=BIG).notes


def test_signed_values_written_without_their_sign_extended_read_as_before(
        tmp_path: Path, pixels: np.ndarray) -> None:
    signed = (pixels.astype(np.int32) - 2048).astype(np.int16)
    plain = _written(tmp_path, "signed.dcm", signed, PixelRepresentation=1)
    unextended = _written(tmp_path, "unextended.dcm", (signed & 0x0FFF).astype(np.int16),
                          PixelRepresentation=1)
    _same_image(unextended, plain)
    assert NOTE not in decode(unextended, max_pixels=BIG).notes


def test_unsigned_values_under_a_signed_header_are_read_as_declared_and_noted(
        tmp_path: Path, pixels: np.ndarray) -> None:
    """0-4095 declared signed 12-bit: they run on smoothly past 2047, as an understated
    depth does; MG is never signed, so this is read as declared (as pydicom does) and said."""
    path = _written(tmp_path, "signed_header.dcm", pixels, PixelRepresentation=1)
    decoded = decode(path, max_pixels=BIG)
    assert "the header misstates the depth or the sign" in decoded.notes[NOTE]
    assert NOTE in input_notes(decoded.notes)


def test_the_continuity_test_samples_rows_of_a_large_image() -> None:
    """A 4096-row image: about SAMPLE_ROWS rows looked at, and still decided."""
    image = synth_mammogram(np.random.default_rng(2), size=(4096, 256))
    masked = image & 0x3FF
    assert bits._continues_above(image, masked, 10)
    overlay = image.copy()
    overlay[:, 100:140] |= 0x8000
    assert not bits._continues_above(overlay, overlay & 0xFFF, 12)


# --- images their header blanks -------------------------------------------------------------

def test_a_window_outside_the_values_is_named_not_called_a_blank_image(
        tmp_path: Path, pixels: np.ndarray) -> None:
    path = _written(tmp_path, "window.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 30000, 100
    ds.save_as(path)
    _refused(path, EmptyImageError, ErrorCode.EMPTY_IMAGE,
             "window.dcm is blanked by its header, not blank: its pixel values run from "
             f"{int(pixels.min()):,} to {int(pixels.max()):,}, but its window, (0028,1050) "
             "Window Center 30000 and (0028,1051) Window Width 100 (LINEAR),",
             "Export the image again with a window over the image's values")


def test_padding_over_every_pixel_is_named_not_called_a_blank_image(
        tmp_path: Path, pixels: np.ndarray) -> None:
    path = _written(tmp_path, "padding.dcm", pixels, PixelPaddingValue=0,
                    PixelPaddingRangeLimit=4095)
    _refused(path, EmptyImageError, ErrorCode.EMPTY_IMAGE,
             "padding.dcm is blanked by its header, not blank: every pixel's stored value lies "
             "in its padding range, (0028,0120) Pixel Padding Value 0 to (0028,0121) Pixel "
             "Padding Range Limit 4095")


def test_a_constant_image_is_still_called_blank(tmp_path: Path) -> None:
    path = _written(tmp_path, "flat.dcm", np.full((100, 100), 900, np.uint16))
    with pytest.raises(EmptyImageError) as caught:
        preprocess(decode(path, max_pixels=BIG), (64, 64))
    assert caught.value.message.startswith("The image is blank")


def test_padding_and_a_window_over_the_values_still_read(tmp_path: Path,
                                                         pixels: np.ndarray) -> None:
    path = _written(tmp_path, "ok.dcm", pixels, PixelPaddingValue=0, PixelPaddingRangeLimit=30)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path)
    assert preprocess(decode(path, max_pixels=BIG), (64, 52)).max() > 0


# --- real vendor files: as before -----------------------------------------------------------

REAL = sorted((SHARED_DATA / "dicom").glob("*.dcm"))


@pytest.mark.realdata
@pytest.mark.skipif(not REAL, reason=f"real DICOM files absent: {SHARED_DATA / 'dicom'}")
def test_real_vendor_files_keep_the_values_pydicom_gave() -> None:
    """Each real file pydicom decodes: the values selected here are pydicom's own (masked)
    values, with no note, so every vendor image reads exactly as before."""
    compared = 0
    for path in REAL:
        ds = pydicom.dcmread(path)
        try:
            ds.pixel_array_options(decoding_plugin=_plugin_for(ds.file_meta.TransferSyntaxUID,
                                                               path))
            expected = ds.pixel_array
            ds.pixel_array_options(decoding_plugin=_plugin_for(ds.file_meta.TransferSyntaxUID,
                                                               path), correct_unused_bits=False)
            words = ds.pixel_array
        except Exception:  # no plugin for it (MG1_JPLY), or damaged (GH1376): not compared
            continue
        notes: dict[str, str] = {}
        np.testing.assert_array_equal(bits.stored_values(words, ds, path, notes), expected)
        assert notes == {}, path.name
        compared += 1
    assert compared >= 4
