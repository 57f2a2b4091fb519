"""The breast mask of data that use a small part of their container.

A 16-bit PNG or TIFF holding 10-bit values (0-1023) spans 1/64 of the unit range: the mask
must still find the breast that the same picture at full range shows, or the crop, the
contrast stretch and the score follow a wrong region.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.imaging.preprocess import preprocess, to_unit_range
from shared.imaging.readers import decode
from shared.imaging.segmentation import breast_mask, working_copy
from shared.imaging.types import DecodedImage
from shared.synthetic import synth_mammogram
from tests.conftest import SHARED_DATA

MINI_MIAS = SHARED_DATA / "mini-mias"
SIZE = (256, 208)


def _mask(pixels: np.ndarray, max_value: float) -> np.ndarray:
    decoded = DecodedImage(pixels=pixels, format="test", max_value=max_value)
    return breast_mask(working_copy(to_unit_range(decoded)))


def _overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two masks."""
    a, b = first.astype(bool), second.astype(bool)
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("bits", [10, 11])
def test_few_bits_in_a_16_bit_container_give_the_full_range_mask(bits: int) -> None:
    pixels = synth_mammogram(np.random.default_rng(3), size=(512, 416), bits=bits)
    in_container = _mask(pixels, 65535)
    own_range = _mask(pixels, 2**bits - 1)
    # Before: every pixel was within 0.05 of the maximum, so all four edges were taken for
    # a clear-film frame and the mask was peeled to the central quarter (IoU about 0.25).
    assert _overlap(in_container, own_range) > 0.98
    assert in_container.sum() > 0.3 * in_container.size


def test_ten_bit_film_scan_in_a_16_bit_png_is_preprocessed_like_the_8_bit_one(
        tmp_path: Path) -> None:
    if not MINI_MIAS.is_dir():
        pytest.skip(f"{MINI_MIAS} (real film scans) is absent")
    scan = cv2.imread(str(MINI_MIAS / "mdb005.png"), cv2.IMREAD_UNCHANGED)
    assert scan is not None and scan.dtype == np.uint8
    ten_bit = tmp_path / "ten_bit.png"
    assert cv2.imwrite(str(ten_bit), (scan.astype(np.uint32) * 1023 // 255).astype(np.uint16))
    original = preprocess(decode(MINI_MIAS / "mdb005.png", max_pixels=10**8), SIZE)
    widened = preprocess(decode(ten_bit, max_pixels=10**8), SIZE)
    # The same breast, cropped and stretched alike: only rounding to 1023 levels differs.
    assert float(np.abs(original - widened).mean()) < 0.01
