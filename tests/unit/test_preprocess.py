"""Preprocessing: pure, deterministic steps from decoded pixels to the model's input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.enums import ErrorCode
from shared.errors import NotAMammogramError, UnreadableImageError
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.preprocess import (
    PREPROCESSING_VERSION,
    preprocess,
    resize_with_padding,
    to_unit_range,
    validate,
)
from shared.imaging.types import DecodedImage
from shared.synthetic import synth_mammogram


def _decoded(pixels: np.ndarray, max_value: float = 4095, invert: bool = False) -> DecodedImage:
    return DecodedImage(pixels=pixels, format="test", max_value=max_value, invert=invert)


def test_unit_range_divides_by_max_and_inverts() -> None:
    pixels = np.array([[0, 4095], [1000, 5000]], dtype=np.uint16)
    plain = to_unit_range(_decoded(pixels))
    assert plain.dtype == np.float32
    expected = np.array([[0, 1], [1000 / 4095, 1]])  # 5000 is above the maximum: clipped
    np.testing.assert_allclose(plain, expected, rtol=1e-6)
    np.testing.assert_allclose(to_unit_range(_decoded(pixels, invert=True)), 1 - plain)


def test_unit_range_does_not_touch_its_input() -> None:
    pixels = np.full((4, 4), 0.5, dtype=np.float32)
    to_unit_range(_decoded(pixels, max_value=1.0, invert=True))
    assert (pixels == 0.5).all()


@pytest.mark.parametrize("image, error, phrase, code", [
    (np.ones((64, 64, 3), np.float32), NotAMammogramError, "2-D", ErrorCode.NOT_MAMMOGRAPHY),
    (np.linspace(0, 1, 63 * 100, dtype=np.float32).reshape(63, 100), NotAMammogramError,
     "too small", ErrorCode.NOT_MAMMOGRAPHY),
    (np.full((100, 100), 0.3, np.float32), NotAMammogramError, "blank", ErrorCode.EMPTY_IMAGE),
    # A 64 x 5000 strip (or a stitched panel) has enough pixels but is no single view.
    (np.linspace(0, 1, 64 * 5000, dtype=np.float32).reshape(5000, 64), NotAMammogramError,
     "78.1 times longer than wide", ErrorCode.NOT_MAMMOGRAPHY),
])
def test_validate_refuses(image: np.ndarray, error: type[Exception], phrase: str,
                          code: ErrorCode) -> None:
    with pytest.raises(error, match=phrase) as caught:
        validate(image)
    assert getattr(caught.value, "code", None) is code


def test_validate_keeps_every_real_mammogram_shape() -> None:
    # Detector formats (4:3), digitised film and CBIS-DDSM scans (up to about 2:1), and a
    # square MIAS frame all pass.
    for rows, columns in ((3062, 2394), (4664, 3064), (1318, 788), (1024, 1024), (400, 100)):
        image = np.linspace(0, 1, rows * columns, dtype=np.float32).reshape(rows, columns)
        assert validate(image) is image


def test_validate_refuses_non_finite_values() -> None:
    image = np.linspace(0, 1, 100 * 100, dtype=np.float32).reshape(100, 100)
    image[5, 5] = np.nan
    with pytest.raises(UnreadableImageError, match="non-finite"):
        validate(image)


def test_resize_keeps_aspect_ratio_top_left() -> None:
    image = np.ones((200, 100), dtype=np.float32)
    out = resize_with_padding(image, (100, 100))
    assert out.shape == (100, 100) and out.dtype == np.float32
    assert (out[:, :50] == 1).all() and (out[:, 50:] == 0).all()
    enlarged = resize_with_padding(np.ones((10, 40), np.float32), (80, 80))
    assert (enlarged[:20] == 1).all() and (enlarged[20:] == 0).all()


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 300), columns=st.integers(1, 300),
       height=st.integers(1, 128), width=st.integers(1, 128))
def test_resize_with_padding_shape_property(rows: int, columns: int, height: int,
                                            width: int) -> None:
    image = np.random.default_rng(rows * 1000 + columns).uniform(0.5, 1.0, (rows, columns))
    out = resize_with_padding(image.astype(np.float32), (height, width))
    assert out.shape == (height, width) and out.dtype == np.float32
    content = out > 0
    used_rows, used_columns = int(content.any(1).sum()), int(content.any(0).sum())
    # The image fills one dimension completely, and keeps its aspect ratio within rounding.
    assert used_rows == height or used_columns == width
    assert abs(used_rows * columns - used_columns * rows) <= rows + columns
    assert out.max() <= 1.0 + 1e-6 and out[content].min() >= 0.5 - 1e-6


def test_preprocess_output_is_model_ready_and_deterministic() -> None:
    pixels = synth_mammogram(np.random.default_rng(0), size=(512, 416))
    first = preprocess(_decoded(pixels), (256, 208))
    assert first.shape == (256, 208, 1) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0 and first.max() > 0.5
    np.testing.assert_array_equal(first, preprocess(_decoded(pixels), (256, 208)))
    assert PREPROCESSING_VERSION == "2"


_NOISE = {
    "uniform noise": np.random.default_rng(4).integers(0, 4096, (600, 480)),
    "one-pixel checkerboard": np.indices((600, 480)).sum(axis=0) % 2 * 4095,
    "two-pixel columns": np.tile(np.arange(480) // 2 % 2, (600, 1)) * 4095,
    "three-pixel rows": np.tile((np.arange(600) // 3 % 2)[:, None], (1, 480)) * 4095,
}


@pytest.mark.parametrize("name", sorted(_NOISE))
def test_preprocess_refuses_noise_and_fine_test_patterns(name: str) -> None:
    with pytest.raises(NotAMammogramError, match="neighbouring pixels are almost unrelated"
                       ) as refused:
        preprocess(_decoded(_NOISE[name].astype(np.uint16)), (128, 128))
    assert refused.value.code is ErrorCode.NOT_MAMMOGRAPHY


def test_detector_noise_on_a_breast_is_not_mistaken_for_noise() -> None:
    # Quantum noise of 3 % of the range at full resolution, far more than real detectors
    # show, averages out in the working copy the check reads.
    pixels = synth_mammogram(np.random.default_rng(5), size=(2048, 1664)).astype(np.float64)
    noisy = pixels + np.random.default_rng(6).normal(0, 0.03 * 4095, pixels.shape)
    out = preprocess(_decoded(np.clip(noisy, 0, 4095).astype(np.uint16)), (256, 208))
    assert out.shape == (256, 208, 1) and float(out.max()) > 0.5


def test_preprocess_refuses_blank_images() -> None:
    with pytest.raises(NotAMammogramError, match="blank"):
        preprocess(_decoded(np.zeros((300, 200), np.uint16)), (128, 128))


def _disc(dtype: type[np.integer], top: int) -> np.ndarray:
    """A white disc on black, as a segmentation or ROI mask is drawn."""
    rows, columns = np.indices((1024, 1024))
    return (((rows - 512) ** 2 + (columns - 400) ** 2 < 300**2) * top).astype(dtype)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535), (np.uint8, 1)])
def test_preprocess_refuses_a_binary_mask(dtype: type[np.integer], top: int) -> None:
    # Smooth, so the noise check passed it, and a disc looks like a breast to the mask:
    # it was scored as a mammogram.
    decoded = DecodedImage(pixels=_disc(dtype, top), format="png", max_value=top)
    with pytest.raises(NotAMammogramError, match="only 2 grey level") as refused:
        preprocess(decoded, (128, 128))
    assert refused.value.code is ErrorCode.NOT_MAMMOGRAPHY
    assert "mask" in refused.value.message


@pytest.mark.parametrize("spacing", [(0.07, 0.07), (0.1, 0.1)])
def test_a_mask_with_a_detectors_pixel_spacing_is_still_refused(
        spacing: tuple[float, float]) -> None:
    # Resampling to the model's pixel size averaged new levels into every edge, so a mask
    # said to come from a 0.07 mm detector reached the model with hundreds of levels.
    decoded = DecodedImage(pixels=_disc(np.uint16, 4095), format="dicom", max_value=4095,
                           pixel_spacing_mm=spacing)
    with pytest.raises(NotAMammogramError, match="only 2 grey level"):
        preprocess(decoded, (128, 128))


def test_a_mammogram_with_few_grey_levels_in_8_bits_is_not_taken_for_a_mask() -> None:
    # 8-bit film scans have 195 levels at the fewest (mini-MIAS); a quarter of that is kept.
    pixels = synth_mammogram(np.random.default_rng(8), size=(600, 480))
    coarse = (np.rint(pixels / 4095 * 50) * 5).astype(np.uint8)  # 51 levels
    out = preprocess(DecodedImage(pixels=coarse, format="png", max_value=255), (128, 128))
    assert float(out.max()) > 0.5


def test_a_refusal_in_preprocessing_names_the_file(tmp_path: Path) -> None:
    # Every reader's refusal starts with the file; validation's did not ("The image is
    # too small to be a mammogram: 32 x 32 pixels").
    path = tmp_path / "tiny.png"
    assert cv2.imwrite(str(path), np.indices((32, 32)).sum(axis=0).astype(np.uint8))
    with pytest.raises(NotAMammogramError) as refused:
        load_model_input(ModelInputSource(str(path), None, None, (128, 128), 10**8))
    assert refused.value.message.startswith("tiny.png: The image is too small")
    assert refused.value.code is ErrorCode.NOT_MAMMOGRAPHY
