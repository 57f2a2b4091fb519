"""A DICOM stored upside down: (0020,0020) Patient Orientation's second value, the direction
down the image, points to the head (H, no F). The reader turns it the right way up and
notes it; every value without H reads exactly as before (pixels and notes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from shared.enums import Laterality, View
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode
from shared.imaging.readers.dicom_meta import ColumnReading, column_reading
from shared.reports.view_images import model_frame
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom
from worker.decoding import input_notes

BIG = 10**8
SIZE = (96, 80)


@pytest.fixture
def pixels() -> np.ndarray:
    image = synth_mammogram(np.random.default_rng(21), size=(240, 200))
    image[40:56, 30:46] = 4095  # a bright spot near the top: up and down differ
    return image


def _dicom(path: Path, pixels: np.ndarray, orientation: object) -> Path:
    write_dicom(path, pixels, study_uid="1.2.826.0.1.3680043.8.498.40",
                sop_uid=generate_uid(entropy_srcs=[path.name]),
                laterality=Laterality.LEFT, view=View.MLO)
    rewrite_dicom(path, ImagerPixelSpacing=[0.1, 0.1])
    if orientation is not None:
        rewrite_dicom(path, PatientOrientation=orientation)
    return path


def _written_as(path: Path, placeholder: bytes, written: bytes) -> None:
    """Replace a value pydicom wrote with bytes it would refuse to write (same length)."""
    data = path.read_bytes()
    assert len(placeholder) == len(written) and data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, written))


@pytest.mark.parametrize("orientation, shown, chest_wall", [
    (["A", "HR"], "'A\\HR'", "left"), (["P", "H"], "'P\\H'", "right"),
    (["P", "HL"], "'P\\HL'", "right"), (["a", "hr"], "'a\\hr'", "left"),
])
def test_an_image_stored_upside_down_is_turned_and_noted(
        tmp_path: Path, pixels: np.ndarray, orientation: list[str], shown: str,
        chest_wall: str) -> None:
    path = _dicom(tmp_path / "mg.dcm", pixels, [value.upper() for value in orientation])
    # Lower case, as some senders write it (pydicom refuses to): read as upper case.
    _written_as(path, "\\".join(orientation).upper().encode(),
                "\\".join(orientation).encode())
    decoded = decode(path, max_pixels=BIG)
    assert np.array_equal(decoded.pixels, pixels[::-1])
    assert decoded.pixels.flags.c_contiguous
    # Top and bottom only: where the chest wall is still follows the first value.
    assert decoded.chest_wall_side == chest_wall
    note = (f"stored upside down ((0020,0020) Patient Orientation {shown}): turned the right "
            "way up for scoring and display")
    assert decoded.notes["orientation"] == note
    assert input_notes(decoded.notes)["orientation"] == note  # kept on the prediction


# Values with only A, P, R, L and F, or none: read exactly as before the second value was.
@pytest.mark.parametrize("orientation", [
    ["A", "F"], ["P", "FL"], ["A", "FR"], ["P", "L"], ["A", "R"], ["R", "P"], ["L", "A"],
    ["A", ""], "CC", "MLO", "P", None,
])
def test_an_orientation_without_the_head_reads_as_before(
        tmp_path: Path, pixels: np.ndarray, orientation: object) -> None:
    plain = decode(_dicom(tmp_path / "plain.dcm", pixels, None), max_pixels=BIG)
    decoded = decode(_dicom(tmp_path / "mg.dcm", pixels, orientation), max_pixels=BIG)
    assert np.array_equal(decoded.pixels, pixels) and decoded.pixels.dtype == plain.pixels.dtype
    assert decoded.notes == plain.notes and "orientation" not in decoded.notes
    assert column_reading(_dataset(orientation)) == ColumnReading()


@pytest.mark.parametrize("orientation, says", [
    (["A", "HF"], "'A\\HF': its second value names both head (H) and feet (F)"),
    (["P", "FH"], "'P\\FH': its second value names both head (H) and feet (F)"),
    (["A", "HX"], "'A\\HX': its second value is not made of A, P, R, L, H and F"),
    (["A", "X"], "'A\\X': its second value is not made of A, P, R, L, H and F"),
])
def test_a_contradictory_or_malformed_second_value_is_noted_not_turned(
        tmp_path: Path, pixels: np.ndarray, orientation: list[str], says: str) -> None:
    decoded = decode(_dicom(tmp_path / "mg.dcm", pixels, orientation), max_pixels=BIG)
    assert np.array_equal(decoded.pixels, pixels)
    assert decoded.notes["orientation"] == (
        f"(0020,0020) Patient Orientation {says}; shown as stored, not turned")


@pytest.mark.parametrize("value, upside_down", [
    (b"A\\HR", True), ("A\\HR\\", True), (["A", "H", "F"], True), (["A"], False),
    ([], False), ("", False)])
def test_odd_values_never_crash(value: object, upside_down: bool) -> None:
    """Bytes, an empty or one-item list, a trailing or third value: read without a crash; a third
    value is not the second's business."""
    assert column_reading(_dataset(value)).upside_down is upside_down


def test_the_turned_copy_gives_the_upright_images_model_input_and_report_frame(
        tmp_path: Path, pixels: np.ndarray) -> None:
    """The flip comes before resampling (0.1 mm pixels shrunk to 0.2), so the copy stored
    upside down is scored, and drawn in the exam PDF, exactly as the upright original."""
    upright = _dicom(tmp_path / "upright.dcm", pixels, ["A", "FL"])
    copy = _dicom(tmp_path / "upside_down.dcm", np.ascontiguousarray(pixels[::-1]),
                  ["A", "HL"])
    tensors = [preprocess(decode(path, max_pixels=BIG), SIZE, laterality=Laterality.LEFT)
               for path in (upright, copy)]
    assert np.array_equal(tensors[0], tensors[1])
    frames = [model_frame(ModelInputSource(str(path), "L", None, SIZE, BIG)).pixels
              for path in (upright, copy)]
    assert frames[0] is not None and frames[1] is not None
    assert np.array_equal(frames[0], frames[1])
    # The spot near the top of the breast stays near the top of the frame.
    rows = np.flatnonzero((frames[0] > 0).any(axis=1))
    spot_row = np.unravel_index(int(np.argmax(frames[0])), frames[0].shape)[0]
    assert spot_row < (rows[0] + rows[-1]) / 2
    notes = load_model_input(ModelInputSource(str(copy), "L", None, SIZE, BIG)).notes
    assert notes["orientation"].startswith("stored upside down")


def _dataset(value: object) -> Dataset:
    ds = Dataset()
    if value is not None:
        ds.PatientOrientation = value
    return ds
