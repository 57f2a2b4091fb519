"""The breast's letter and the view as (0018,5101) View Position writes them ("RMLO", "LCC",
"MEDIOLATERAL OBLIQUE"), and a View Position that disagrees with the rest of the header.

Found by a probe: "RMLO" without any laterality element left the laterality unknown, so the
exam could not place the view; "LMLO" on an image whose Image Laterality is R became OTHER
without a word of the conflict; spelt-out views ("MEDIOLATERAL OBLIQUE", a View Code
Sequence meaning "Mediolateral Oblique") became OTHER; a View Position CC beside a View Code
Sequence MLO was taken as CC in silence.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from shared.enums import Laterality, View
from shared.imaging.readers import decode, read_header
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom
from worker.decoding import input_notes

BIG = 10**8
KEY = Pseudonymizer(b"unit-test-key-not-a-secret")


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    return write_dicom(tmp_path / "mg.dcm",
                       synth_mammogram(np.random.default_rng(8), size=(160, 128)),
                       study_uid="1.2.826.0.1.3680043.8.498.40",
                       sop_uid="1.2.826.0.1.3680043.8.498.41", laterality=Laterality.LEFT,
                       view=View.CC)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _rewrite(path: Path, **changes: object) -> None:
    """``rewrite_dicom``, letting pydicom store values its CS rules call invalid (lower
    case, hyphens, over 16 characters): vendors write them, and so the reader must read
    them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rewrite_dicom(path, **changes)


def _read(path: Path) -> tuple[Laterality | None, View | None, dict[str, str]]:
    header = read_header(path, pseudonymize=KEY)
    return header.laterality, header.view, decode(path, max_pixels=BIG).notes


# --- the letter is a stated laterality -----------------------------------------------------

@pytest.mark.parametrize("position, side, view", [
    ("RMLO", Laterality.RIGHT, View.MLO), ("LCC", Laterality.LEFT, View.CC),
    ("R MLO", Laterality.RIGHT, View.MLO), ("R-CC", Laterality.RIGHT, View.CC),
    ("LMLOID", Laterality.LEFT, View.MLO), ("RLM", Laterality.RIGHT, View.LM),
    # A plain view is read whole first: latero-medial, not a left M.
    ("LM", None, View.LM), ("LMO", None, View.LMO), ("MLO", None, View.MLO),
])
def test_the_letter_in_view_position_is_the_laterality_when_nothing_else_states_one(
        dicom_file: Path, position: str, side: Laterality | None, view: View) -> None:
    _rewrite(dicom_file, ImageLaterality=None, ViewPosition=position)

    laterality, read_view, notes = _read(dicom_file)

    assert (laterality, read_view) == (side, view)
    assert "laterality_conflict" not in notes


def test_an_agreeing_letter_adds_no_note(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImageLaterality="L", ViewPosition="LCC")
    laterality, view, notes = _read(dicom_file)
    assert (laterality, view) == (Laterality.LEFT, View.CC)
    assert "laterality_conflict" not in notes


@pytest.mark.parametrize("position, view", [("RMLO", View.MLO), ("RCC", View.CC)])
def test_a_letter_against_image_laterality_is_a_conflict_noted_like_the_others(
        dicom_file: Path, position: str, view: View) -> None:
    """As two laterality elements that disagree: the first element is scored, the view
    is read, and the note names both."""
    _rewrite(dicom_file, ImageLaterality="L", ViewPosition=position)

    laterality, read_view, notes = _read(dicom_file)

    assert (laterality, read_view) == (Laterality.LEFT, view)
    assert notes["laterality_conflict"] == (
        f"(0020,0062) Image Laterality says L, but (0018,5101) View Position '{position}' "
        "says R: check the laterality; scored as L")
    assert "laterality_conflict" in input_notes(notes)


def test_the_letter_joins_a_conflict_among_the_laterality_elements(dicom_file: Path) -> None:
    _rewrite(dicom_file, ImageLaterality=None, Laterality="R", ViewPosition="LMLO")
    laterality, _, notes = _read(dicom_file)
    assert laterality is Laterality.RIGHT
    assert notes["laterality_conflict"] == (
        "(0020,0060) Laterality says R, but (0018,5101) View Position 'LMLO' says L: check "
        "the laterality; scored as R")


# --- spelt-out views ---------------------------------------------------------------------

@pytest.mark.parametrize("position, view", [
    ("MEDIOLATERAL OBLIQUE", View.MLO), ("Medio-Lateral Oblique", View.MLO),
    ("cranio caudal", View.CC), ("CRANIOCAUDAL", View.CC), ("latero-medial", View.LM),
])
def test_a_view_position_spelling_the_view_out_is_read(dicom_file: Path, position: str,
                                                       view: View) -> None:
    _rewrite(dicom_file, ViewPosition=position)
    assert read_header(dicom_file, pseudonymize=KEY).view is view


@pytest.mark.parametrize("meaning, view", [
    ("Mediolateral Oblique", View.MLO), ("MEDIO-LATERAL OBLIQUE", View.MLO),
    ("Cranio Caudal", View.CC), ("caudo-cranial (from below)", View.FB),
    ("Cranio-caudal exaggerated laterally", View.XCCL),
])
def test_view_code_meanings_are_matched_whatever_their_case_hyphens_or_spaces(
        dicom_file: Path, meaning: str, view: View) -> None:
    _rewrite(dicom_file, ViewPosition=None,
                  ViewCodeSequence=[_code("X-1", "99LOCAL", meaning)])
    assert read_header(dicom_file, pseudonymize=KEY).view is view


# --- View Position against View Code Sequence --------------------------------------------

def test_view_position_and_view_code_sequence_that_disagree_are_noted(
        dicom_file: Path) -> None:
    _rewrite(dicom_file, ViewPosition="CC",
                  ViewCodeSequence=[_code("399368009", "SCT", "medio-lateral oblique")])

    _, view, notes = _read(dicom_file)

    assert view is View.CC
    assert notes["view_conflict"] == (
        "(0018,5101) View Position says CC, but (0054,0220) View Code Sequence says MLO: "
        "check the view; read as CC")
    assert "view_conflict" in input_notes(notes)
    _rewrite(dicom_file, ViewPosition="LMLO")
    assert decode(dicom_file, max_pixels=BIG).notes.get("view_conflict") is None


@pytest.mark.parametrize("position, code", [
    ("CC", _code("R-10242", "SRT", "cranio-caudal")),  # they agree
    ("SPOT", _code("399368009", "SCT", "medio-lateral oblique")),  # no view: the code decides
    ("CC", _code("X-2", "99LOCAL", "something else")),  # the code names no view
])
def test_no_view_note_when_they_agree_or_one_names_no_view(dicom_file: Path, position: str,
                                                          code: Dataset) -> None:
    _rewrite(dicom_file, ViewPosition=position, ViewCodeSequence=[code])
    assert "view_conflict" not in decode(dicom_file, max_pixels=BIG).notes
