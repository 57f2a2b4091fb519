"""Preprocessing v2: orientation, breast segmentation and crop, physical spacing, contrast.

The images are synthetic (``synth_mammogram``) with the artefacts real files carry added on
purpose: a background that is not 0, burned-in labels, bright film edges. mini-MIAS (real
digitised film) is checked when ``../shared/data`` is present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.enums import ErrorCode, Laterality
from shared.errors import NotAMammogramError
from shared.imaging.preprocess import (
    MAX_ASPECT,
    preprocess,
    refuse_noise,
    resample_to_spacing,
    to_unit_range,
)
from shared.imaging.readers import decode
from shared.imaging.segmentation import breast_mask, chest_wall_side, working_copy
from shared.imaging.types import DecodedImage
from shared.synthetic import synth_mammogram
from tests.conftest import SHARED_DATA

MINI_MIAS = SHARED_DATA / "mini-mias"
SIZE = (256, 208)


def _decoded(pixels: np.ndarray, **fields: object) -> DecodedImage:
    return DecodedImage(pixels=pixels, format="test", max_value=4095, **fields)  # type: ignore[arg-type]


def _breast(seed: int, laterality: Laterality = Laterality.LEFT,
            size: tuple[int, int] = (512, 416)) -> np.ndarray:
    return synth_mammogram(np.random.default_rng(seed), size=size, laterality=laterality)


def _mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first - second).mean())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(64, 400), columns=st.integers(64, 400),
       right=st.booleans(), offset=st.integers(0, 600),
       height=st.integers(32, 160), width=st.integers(32, 160))
def test_output_shape_range_and_determinism(seed: int, rows: int, columns: int, right: bool,
                                            offset: int, height: int, width: int) -> None:
    assume(max(rows, columns) <= MAX_ASPECT * min(rows, columns))  # longer: not one view
    laterality = Laterality.RIGHT if right else Laterality.LEFT
    pixels = _breast(seed, laterality, (rows, columns)) + np.uint16(offset)
    first = preprocess(_decoded(pixels), (height, width), laterality=laterality)
    assert first.shape == (height, width, 1) and first.dtype == np.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert float(first.max()) > 0.5  # a breast, contrast-stretched
    again = preprocess(_decoded(pixels.copy()), (height, width), laterality=laterality)
    assert first.tobytes() == again.tobytes()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(256, 480), columns=st.integers(256, 480),
       laterality=st.sampled_from([Laterality.LEFT, Laterality.RIGHT]),
       spacing=st.sampled_from([None, (0.07, 0.07), (0.1, 0.05)]))
def test_mirrored_input_with_mirrored_laterality_gives_identical_output(
        seed: int, rows: int, columns: int, laterality: Laterality,
        spacing: tuple[float, float] | None) -> None:
    pixels = _breast(seed, laterality, (rows, columns))
    other = Laterality.RIGHT if laterality is Laterality.LEFT else Laterality.LEFT
    direct = preprocess(_decoded(pixels, pixel_spacing_mm=spacing), SIZE,
                        laterality=laterality)
    mirrored = preprocess(_decoded(pixels[:, ::-1].copy(), pixel_spacing_mm=spacing), SIZE,
                          laterality=other)
    assert direct.tobytes() == mirrored.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_chest_wall_ends_on_the_left_whatever_the_evidence(seed: int) -> None:
    right = _breast(seed, Laterality.RIGHT)
    by_laterality = preprocess(_decoded(right), SIZE, laterality=Laterality.RIGHT)
    by_image = preprocess(_decoded(right), SIZE)
    by_header = preprocess(_decoded(right, chest_wall_side="right"), SIZE)
    assert by_laterality.tobytes() == by_image.tobytes() == by_header.tobytes()
    # Tissue touches the left edge (chest wall) and fades out before the right one.
    content = by_image[:, :, 0] > 0
    assert content[:, 0].mean() > 0.5
    assert content.any(axis=0).sum() < SIZE[1] or not content[:, -1].any()


def test_header_orientation_outranks_laterality() -> None:
    left = _breast(3, Laterality.LEFT)
    # Patient Orientation says the stored image is a mirrored left breast: trust it.
    trusted = preprocess(_decoded(left[:, ::-1].copy(), chest_wall_side="right"), SIZE,
                         laterality=Laterality.LEFT)
    assert trusted.tobytes() == preprocess(_decoded(left), SIZE).tobytes()


def test_image_decides_the_chest_wall_side_when_laterality_is_unknown() -> None:
    for seed in range(10):
        for laterality, side in ((Laterality.LEFT, "left"), (Laterality.RIGHT, "right")):
            work = working_copy(to_unit_range(_decoded(_breast(seed, laterality))))
            assert chest_wall_side(breast_mask(work)) == side


def test_background_that_is_not_zero_is_still_background() -> None:
    pixels = _breast(7)
    clean = preprocess(_decoded(pixels), SIZE)
    fogged = pixels + np.uint16(700)  # film base / detector offset, about 17 %
    out = preprocess(_decoded(fogged), SIZE)
    assert _mean_difference(out, clean) < 0.02
    assert (out[:, :, 0][~(clean[:, :, 0] > 0)] == 0).mean() > 0.95


def test_burned_in_corner_labels_are_neither_cropped_in_nor_shown() -> None:
    pixels = _breast(11)
    clean = preprocess(_decoded(pixels), SIZE)
    labelled = pixels.copy()
    labelled[10:60, 360:405] = 4095  # an "R MLO" marker in the corner opposite the chest
    labelled[470:500, 330:400] = 3000  # and a text line at the bottom
    out = preprocess(_decoded(labelled), SIZE)
    assert _mean_difference(out, clean) < 0.01


def test_bright_film_edges_are_ignored() -> None:
    pixels = _breast(5)
    clean = preprocess(_decoded(pixels), SIZE)
    filmed = pixels.copy()
    filmed[:, 405:410] = 4095  # a bright vertical film edge away from the breast
    filmed[:6, :] = 4000  # and one along the top, touching the breast
    out = preprocess(_decoded(filmed), SIZE)
    assert _mean_difference(out, clean) < 0.02


@pytest.mark.parametrize("sides, level", [((40, 30, 24, 36), 4095), ((40, 0, 24, 36), 4095),
                                          ((0, 30, 0, 50), 3990)])
def test_a_clear_film_frame_around_the_image_is_background(
        sides: tuple[int, int, int, int], level: int) -> None:
    # A film scanned with white (clear film) all round: the frame was the largest bright
    # region, so the whole picture, frame included, was taken for the breast.
    pixels = _breast(5)
    top, bottom, left, right = sides
    framed = np.full((pixels.shape[0] + top + bottom, pixels.shape[1] + left + right), level,
                     np.uint16)
    framed[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    clean = preprocess(_decoded(pixels), SIZE)
    # The crop's margin takes in 2 mask pixels of (blacked) frame: a slight shift, no more
    # (the frame taken for breast: 0.26).
    assert _mean_difference(preprocess(_decoded(framed), SIZE), clean) < 0.04


def test_breast_is_cropped_to_fill_the_input() -> None:
    pixels = np.zeros((800, 800), np.uint16)
    pixels[100:612, 50:466] = _breast(2)  # a small breast in a big empty frame
    out = preprocess(_decoded(pixels), SIZE)[:, :, 0]
    content = out > 0
    # Cropped: the breast spans (nearly) the full height or width instead of about 60 %.
    assert content.any(axis=1).mean() > 0.9 or content.any(axis=0).mean() > 0.9


def test_physical_spacing_brings_images_to_the_same_detail() -> None:
    pixels = _breast(9, size=(1024, 832))
    fine = preprocess(_decoded(pixels, pixel_spacing_mm=(0.1, 0.1)), SIZE)
    half = pixels.reshape(512, 2, 416, 2).mean(axis=(1, 3)).astype(np.uint16)
    coarse = preprocess(_decoded(half, pixel_spacing_mm=(0.2, 0.2)), SIZE)
    assert _mean_difference(fine, coarse) < 0.01


def test_resample_to_spacing_shrinks_fine_and_squares_pixels_but_never_enlarges() -> None:
    image = np.ones((1000, 800), np.float32)
    assert resample_to_spacing(image, (0.1, 0.1)).shape == (500, 400)
    assert resample_to_spacing(image, (0.5, 0.5)) is image
    assert resample_to_spacing(image, None) is image
    assert resample_to_spacing(image, (0.1, 0.05)).shape == (500, 200)
    assert resample_to_spacing(image, (0.4, 0.2)).shape == (1000, 400)


@pytest.mark.parametrize("spacing", [(math.inf, math.inf), (math.nan, 0.1), (-0.1, 0.1),
                                     (0.0, 0.0)])
def test_a_spacing_that_is_not_a_positive_number_is_ignored(
        spacing: tuple[float, float]) -> None:
    image = np.ones((1000, 800), np.float32)
    assert resample_to_spacing(image, spacing) is image


@pytest.mark.parametrize("spacing", [(0.01, 0.01), (1e-300, 1e-300), (0.005, 0.1)])
def test_a_spacing_that_would_shrink_the_image_to_a_few_pixels_is_refused(
        spacing: tuple[float, float]) -> None:
    # 1024 x 832 pixels of 10 micron would be a breast 1 cm across: the header is wrong,
    # and scoring the ~50 pixels left after resampling would invent a result.
    pixels = _breast(3, size=(1024, 832))
    with pytest.raises(NotAMammogramError, match="pixel spacing") as raised:
        preprocess(_decoded(pixels, pixel_spacing_mm=spacing), SIZE)
    assert raised.value.code is ErrorCode.NOT_MAMMOGRAPHY


@pytest.mark.skipif(not MINI_MIAS.is_dir(), reason=f"{MINI_MIAS} (real film scans) is absent")
def test_no_mini_mias_film_scan_is_taken_for_noise() -> None:
    images = sorted(MINI_MIAS.glob("mdb*.png"))
    assert len(images) >= 200, f"expected the 258 mini-MIAS scans in {MINI_MIAS}"
    for path in images:
        decoded = decode(path, max_pixels=10**8)
        refuse_noise(working_copy(to_unit_range(decoded)))


@pytest.mark.skipif(not MINI_MIAS.is_dir(), reason=f"{MINI_MIAS} (real film scans) is absent")
def test_mini_mias_film_scans_load_and_preprocess() -> None:
    images = sorted(MINI_MIAS.glob("mdb*.png"))[:40]
    assert images, f"no mdb*.png in {MINI_MIAS}"
    agree = 0
    for path in images:
        decoded = decode(path, max_pixels=10**8)
        assert decoded.pixels.shape == (1024, 1024)
        out = preprocess(decoded, SIZE)
        assert out.shape == (*SIZE, 1) and float(out.max()) > 0.9
        # The film's bright edges and labels are gone: the crop's corner opposite the
        # chest wall (top-right of the output, beyond the breast) is background.
        right_column = out[: SIZE[0] // 8, -SIZE[1] // 8:, 0]
        assert float(right_column.mean()) < 0.5
        # Even numbers are left breasts (the data set's README): chest wall on the left as
        # stored, so the image-based decision should leave them as they are.
        number = int(path.stem[3:])
        expected = Laterality.LEFT if number % 2 == 0 else Laterality.RIGHT
        agree += out.tobytes() == preprocess(decoded, SIZE, laterality=expected).tobytes()
    assert agree >= 0.9 * len(images)


def test_a_breast_saturated_along_the_chest_wall_is_not_taken_for_a_film_frame() -> None:
    # FFDM crops the breast at the chest wall; a narrow window saturates the dense tissue
    # there, so the whole edge column is near white. It was peeled away as a "frame",
    # taking chest-wall tissue out of the picture the model sees.
    pixels = _breast(6).astype(np.float64)
    rows = np.flatnonzero(pixels[:, 8] > 600)
    pixels = pixels[rows[0]:rows[-1] + 1, 8:]  # cropped: breast along the whole left edge
    windowed = np.clip((pixels - 600) * 3, 0, 4095).astype(np.float32) / 4095
    assert (windowed[:, 0] >= 0.95).mean() >= 0.9  # a near-white edge line
    mask = breast_mask(working_copy(windowed))
    assert mask[:, :2].any(axis=0).all()  # the chest-wall columns are breast (13 were cut)
