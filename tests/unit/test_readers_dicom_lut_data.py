"""VOI LUT Data in the forms files carry it: US numbers, OW words, one byte per entry, and
UN bytes (a 65,536-entry LUT is too long for US in explicit VR: pydicom itself writes it as
UN). A LUT is applied as its OW twin would be, or passed over for the window with a note;
never a refusal with the bytes in the message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_voi

from shared.enums import Laterality, View
from shared.imaging.readers import decode, dicom_voi, read_header
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom

BIG = 10**8


@pytest.fixture
def pixels() -> np.ndarray:
    return synth_mammogram(np.random.default_rng(8), size=(160, 128))  # 12-bit values


@pytest.fixture
def dicom_file(tmp_path: Path, pixels: np.ndarray) -> Path:
    return write_dicom(tmp_path / "mg.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.70",
                       sop_uid="1.2.826.0.1.3680043.8.498.71", laterality=Laterality.LEFT,
                       view=View.CC)


def _with_lut(path: Path, descriptor: list[int], vr: str, data: bytes,
              window: bool = False) -> Path:
    """``path`` with one VOI LUT item, and the window 1024/1024 or none."""
    ds = pydicom.dcmread(path)
    if window:
        ds.WindowCenter, ds.WindowWidth = 1024, 1024
    else:
        del ds.WindowCenter, ds.WindowWidth
    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)
    item.add_new("LUTData", vr, data)
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    return path


def _lut_data_vr(path: Path) -> str:
    return str(pydicom.dcmread(path).VOILUTSequence[0]["LUTData"].VR)


def test_a_65536_entry_lut_read_as_un_is_applied_as_its_ow_twin(
        tmp_path: Path, dicom_file: Path, pixels: np.ndarray) -> None:
    """Built as the probe's file: descriptor 0\\0\\16, LUT Data v * 16, no window."""
    table = (np.minimum(np.arange(65536), 4095) * 16).astype("<u2").tobytes()
    twin = tmp_path / "ow.dcm"
    twin.write_bytes(dicom_file.read_bytes())
    _with_lut(dicom_file, [0, 0, 16], "UN", table)
    _with_lut(twin, [0, 0, 16], "OW", table)
    assert _lut_data_vr(dicom_file) == "UN" and _lut_data_vr(twin) == "OW"

    decoded = decode(dicom_file, max_pixels=BIG)
    reference = decode(twin, max_pixels=BIG)

    np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    np.testing.assert_array_equal(decoded.pixels, (pixels * 16).astype(np.float32))
    assert decoded.max_value == reference.max_value == 65535
    assert reference.notes["voi"] == "VOI LUT 1 of 1"
    assert decoded.notes["voi"] == ("VOI LUT 1 of 1; VOI LUT 1: (0028,3006) LUT Data of VR UN "
                                    "read as 16-bit words")
    assert read_header(dicom_file).voi == decoded.notes["voi"]


def test_an_8_bit_lut_of_one_byte_per_entry_read_as_un_is_applied(
        dicom_file: Path, pixels: np.ndarray) -> None:
    table = np.minimum(np.arange(65536) // 16, 255).astype(np.uint8).tobytes()
    _with_lut(dicom_file, [0, 0, 8], "UN", table)
    assert _lut_data_vr(dicom_file) == "UN"
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == ("VOI LUT 1 of 1; VOI LUT 1: (0028,3006) LUT Data of VR UN "
                                    "read as 8-bit entries")
    assert decoded.max_value == 255
    np.testing.assert_array_equal(decoded.pixels, (pixels // 16).astype(np.float32))


def test_an_8_bit_lut_of_one_byte_per_entry_in_ow_is_applied(
        dicom_file: Path, pixels: np.ndarray) -> None:
    """PS3.3 C.11.2.1.1: 8-bit entries are stored as with 8 bits allocated, two a word."""
    table = (np.arange(4096) // 16).astype(np.uint8).tobytes()
    _with_lut(dicom_file, [4096, 0, 8], "OW", table)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == "VOI LUT 1 of 1"
    np.testing.assert_array_equal(decoded.pixels, (pixels // 16).astype(np.float32))


def test_a_lut_whose_values_its_entries_cannot_hold_gives_way_to_the_window(
        tmp_path: Path, dicom_file: Path) -> None:
    """8 bits per entry declared, 12-bit values written: applying it would fail (pydicom:
    OverflowError) or saturate; the window is used and the note says why."""
    window_only = rewrite_dicom(dicom_file, WindowCenter=1024, WindowWidth=1024)
    window_only.save_as(tmp_path / "window.dcm")
    _with_lut(dicom_file, [4096, 0, 8], "OW", np.arange(4096, dtype="<u2").tobytes(),
              window=True)
    decoded = decode(dicom_file, max_pixels=BIG)
    assert decoded.notes["voi"] == (
        "window 1 of 1: centre 1024, width 1024, LINEAR; VOI LUT 1 not used: (0028,3006) LUT "
        "Data holds values from 0 to 4,095; 8 bits per entry hold 0 to 255")
    np.testing.assert_array_equal(decoded.pixels,
                                  decode(tmp_path / "window.dcm", max_pixels=BIG).pixels)


def _dataset_with_lut(descriptor: list[int], vr: str, data: object,
                      little_endian: bool) -> Dataset:
    ds = Dataset()
    ds.set_original_encoding(False, little_endian)
    item = Dataset()
    # A first value mapped below 0 is written with VR SS (the VR is "US or SS").
    item.add_new("LUTDescriptor", "SS" if min(descriptor) < 0 else "US", descriptor)
    item.add_new("LUTData", vr, data)
    ds.VOILUTSequence = [item]
    return ds


@pytest.mark.parametrize("little_endian", [True, False])
def test_un_lut_data_is_read_in_the_datasets_byte_order(little_endian: bool) -> None:
    table = np.arange(65536, dtype=np.int64) * 7 % 65536
    data = table.astype("<u2" if little_endian else ">u2").tobytes()
    ds = _dataset_with_lut([0, 0, 16], "UN", data, little_endian)
    choice = dicom_voi.choose(ds)
    assert choice.kind == "lut" and dicom_voi.output_range(ds, choice) == (0.0, 65535.0)
    values = np.array([0, 1, 2, 300, 65535], dtype=np.int64)
    np.testing.assert_array_equal(dicom_voi.apply(values, ds, choice), table[values])


def test_lut_application_matches_pydicom_inside_and_outside_the_mapped_range() -> None:
    """Values below the first mapped take the first entry, values past the last the last."""
    ds = _dataset_with_lut([256, -100, 12], "US", [4095 - 3 * v for v in range(256)], True)
    values = np.arange(-300, 400, dtype=np.int64)
    choice = dicom_voi.choose(ds)
    assert choice.kind == "lut"
    np.testing.assert_array_equal(dicom_voi.apply(values, ds, choice),
                                  apply_voi(values, ds, index=0))


def test_lut_data_that_is_too_short_as_bytes_is_passed_over_counting_entries() -> None:
    ds = _dataset_with_lut([0, 0, 16], "UN", bytes(1000), True)
    choice = dicom_voi.choose(ds)
    assert choice.kind == "none"
    assert choice.notes == ("VOI LUT 1 not used: (0028,3006) LUT Data holds 500 entries, "
                            "65,536 declared by (0028,3002) LUT Descriptor",)
