"""A breast that lies against its header's laterality (L and R labels swapped, pixels not)
is scored as the header says, as before, but now with a "laterality" note that reaches the
prediction's input_notes; the model input itself is unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from shared.enums import Laterality, View
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.preprocess import preprocess, preprocess_with_notes
from shared.imaging.readers import decode
from shared.imaging.types import DecodedImage
from shared.synthetic import synth_mammogram, write_dicom
from tests.conftest import SHARED_DATA
from worker.decoding import Decoded, DecodeJob, run_job

SIZE = (128, 128)
MINI_MIAS = SHARED_DATA / "mini-mias"
SWAPPED = ("header says R, but the breast lies as in an L image: check the laterality; "
           "scored as R")


def _left_breast(seed: int = 5) -> np.ndarray:
    """Chest wall on the left edge, as a stored left breast has it."""
    return synth_mammogram(np.random.default_rng(seed), size=(320, 256),
                           laterality=Laterality.LEFT)


def _decoded(pixels: np.ndarray, **fields: object) -> DecodedImage:
    return DecodedImage(pixels=pixels, format="test", max_value=4095, **fields)  # type: ignore[arg-type]


def test_a_left_breast_labelled_right_is_noted_and_scored_as_labelled() -> None:
    decoded = _decoded(_left_breast())

    prepared = preprocess_with_notes(decoded, SIZE, laterality=Laterality.RIGHT)

    assert prepared.notes == {"laterality": SWAPPED}
    # Scored as R, as before: the same tensor as the plain path, mirrored as an R image is.
    np.testing.assert_array_equal(prepared.tensor,
                                  preprocess(decoded, SIZE, laterality=Laterality.RIGHT))
    mirrored = _decoded(np.ascontiguousarray(_left_breast()[:, ::-1]))
    np.testing.assert_array_equal(prepared.tensor,
                                  preprocess(mirrored, SIZE, laterality=Laterality.LEFT))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_breast_lying_as_its_header_says_has_no_note(seed: int) -> None:
    left = _left_breast(seed)
    assert preprocess_with_notes(_decoded(left), SIZE, laterality=Laterality.LEFT).notes == {}
    right = np.ascontiguousarray(left[:, ::-1])
    assert preprocess_with_notes(_decoded(right), SIZE, laterality=Laterality.RIGHT).notes == {}


def test_without_laterality_the_image_decides_and_nothing_is_contradicted() -> None:
    right = np.ascontiguousarray(_left_breast()[:, ::-1])
    for laterality in (None, Laterality.BOTH):
        assert preprocess_with_notes(_decoded(right), SIZE, laterality=laterality).notes == {}


def test_an_image_unclear_about_its_side_never_contradicts_the_header() -> None:
    # A breast shape as wide on both sides: the image cannot say where the chest wall is.
    left = _left_breast()
    both_ways = np.maximum(left, left[:, ::-1])
    for laterality in (Laterality.LEFT, Laterality.RIGHT):
        assert preprocess_with_notes(_decoded(both_ways), SIZE,
                                     laterality=laterality).notes == {}


def test_a_patient_orientation_against_the_image_is_noted() -> None:
    # Patient Orientation says the chest wall is on the right; the breast has it on the left.
    decoded = _decoded(_left_breast(), chest_wall_side="right")

    notes = preprocess_with_notes(decoded, SIZE, laterality=None).notes

    assert notes == {"laterality": "(0020,0020) Patient Orientation puts the chest wall on "
                                   "the right, but the breast lies with it on the left: check "
                                   "the header; scored as the header has it"}


def test_a_breast_stored_mirrored_as_its_patient_orientation_says_has_no_note() -> None:
    # Some vendors store a left breast with its chest wall on the right and say so.
    right_side = np.ascontiguousarray(_left_breast()[:, ::-1])
    decoded = _decoded(right_side, chest_wall_side="right")
    assert preprocess_with_notes(decoded, SIZE, laterality=Laterality.LEFT).notes == {}


@pytest.mark.skipif(not MINI_MIAS.is_dir(), reason=f"{MINI_MIAS} (real film scans) is absent")
@pytest.mark.parametrize("name, laterality", [("mdb001.png", Laterality.RIGHT),
                                              ("mdb002.png", Laterality.LEFT)])
def test_real_film_scans_are_noted_only_when_their_labels_are_swapped(
        name: str, laterality: Laterality) -> None:
    decoded = decode(MINI_MIAS / name, max_pixels=10**8)
    other = Laterality.LEFT if laterality is Laterality.RIGHT else Laterality.RIGHT

    assert preprocess_with_notes(decoded, SIZE, laterality=laterality).notes == {}
    swapped = preprocess_with_notes(decoded, SIZE, laterality=other).notes
    assert swapped == {"laterality": f"header says {other}, but the breast lies as in an "
                                     f"{laterality} image: check the laterality; scored as "
                                     f"{other}"}


def test_a_dicom_with_swapped_labels_carries_the_note_to_the_prediction(
        tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "swapped.dcm", _left_breast(), study_uid="1.2.3.4",
                       sop_uid="1.2.3.4.1", laterality=Laterality.RIGHT, view=View.CC)
    source = ModelInputSource(str(path), "R", None, SIZE, 10**8)

    ready = load_model_input(source)
    result = run_job(DecodeJob(7, source))

    assert ready.notes["laterality"] == SWAPPED
    decoded = decode(path, max_pixels=10**8)
    np.testing.assert_array_equal(ready.tensor,
                                  preprocess(decoded, SIZE, laterality=Laterality.RIGHT))
    assert isinstance(result, Decoded) and result.notes["laterality"] == SWAPPED
    # The swapped file's pixels, relabelled as they lie, are read without the note.
    relabelled = dataclasses.replace(source, laterality="L")
    assert "laterality" not in load_model_input(relabelled).notes


@pytest.mark.parametrize(("size", "spacing", "noted"), [
    ((64, 64), None, True), ((255, 300), None, True), ((256, 300), None, False),
    ((128, 128), (0.2, 0.2), False)])
def test_a_small_image_without_a_spacing_is_noted_as_a_likely_preview(
        size: tuple[int, int], spacing: tuple[float, float] | None, noted: bool) -> None:
    # A PACS icon enlarged 8x was scored malignant/6 where its full image gave normal/5.
    pixels = synth_mammogram(np.random.default_rng(4), size=size, laterality=Laterality.LEFT)
    decoded = _decoded(pixels, pixel_spacing_mm=spacing)
    prepared = preprocess_with_notes(decoded, SIZE, laterality=Laterality.LEFT)
    note = prepared.notes.get("low_resolution")
    assert (note is not None) == noted
    if note is not None:
        assert note.startswith(f"only {size[1]} x {size[0]} pixels and no pixel spacing")
    # Only a note: the model input is what it was.
    np.testing.assert_array_equal(prepared.tensor,
                                  preprocess(decoded, SIZE, laterality=Laterality.LEFT))
