"""A laterality not written as a defined term (L, R, B) is read, with a note.

ImageLaterality ``l`` was read as L with no input note, while every other header value read
leniently (a decimal comma in a window, a rescale or a pixel spacing) says so: a reader
should know the sender wrote the breast in a form DICOM does not define.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from shared.enums import Laterality, View
from shared.imaging.readers import decode, read_header
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom
from worker.decoding import input_notes

BIG = 10**8


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    pixels = synth_mammogram(np.random.default_rng(8), size=(160, 128))
    return write_dicom(tmp_path / "mg.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.20",
                       sop_uid="1.2.826.0.1.3680043.8.498.21", laterality=Laterality.LEFT,
                       view=View.CC)


def _rewrite(path: Path, **changes: object) -> None:
    with warnings.catch_warnings():  # pydicom warns of a CS value in lower case
        warnings.simplefilter("ignore", UserWarning)
        rewrite_dicom(path, **changes)


@pytest.mark.parametrize("changes, side, note", [
    ({"ImageLaterality": "l"}, Laterality.LEFT, "(0020,0062) Image Laterality 'l' read as L"),
    ({"ImageLaterality": "r"}, Laterality.RIGHT, "(0020,0062) Image Laterality 'r' read as R"),
    ({"ImageLaterality": None, "Laterality": "Right"}, Laterality.RIGHT,
     "(0020,0060) Laterality 'Right' read as R"),
])
def test_a_laterality_written_leniently_is_read_and_noted(
        dicom_file: Path, changes: dict[str, str | None], side: Laterality, note: str) -> None:
    _rewrite(dicom_file, **changes)
    assert read_header(dicom_file).laterality is side
    notes = decode(dicom_file, max_pixels=BIG).notes
    assert notes["laterality_value"] == note
    assert "laterality_conflict" not in notes
    # Through the worker's selection, to the prediction's input_notes.
    assert input_notes(notes)["laterality_value"] == note


@pytest.mark.parametrize("changes", [{}, {"ImageLaterality": "R", "Laterality": "R"},
                                     {"ImageLaterality": None}, {"ImageLaterality": "U"}])
def test_a_laterality_written_as_a_defined_term_or_not_at_all_has_no_note(
        dicom_file: Path, changes: dict[str, str | None]) -> None:
    _rewrite(dicom_file, **changes)
    assert "laterality_value" not in decode(dicom_file, max_pixels=BIG).notes
