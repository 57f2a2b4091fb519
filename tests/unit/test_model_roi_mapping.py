"""Lesion circles land where the shared preprocessing puts the lesion's pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.datasets import LabelledImage, Roi
from models.roi_mapping import circles_in_input
from shared.enums import Label, Laterality
from shared.imaging.preprocess import preprocess
from shared.imaging.types import DecodedImage
from shared.synthetic import synth_mammogram


@pytest.mark.parametrize("laterality", [Laterality.LEFT, Laterality.RIGHT])
def test_a_drawn_disc_is_inside_its_mapped_circle(laterality: Laterality) -> None:
    rows, cols = 600, 480
    pixels = synth_mammogram(np.random.default_rng(4), (rows, cols), laterality=laterality)
    image = pixels.astype(np.float32) * 0.6
    x = int(cols * (0.3 if laterality is Laterality.LEFT else 0.7))
    y = int(rows * 0.45)
    cv2.circle(image, (x, y), 15, 4095.0, thickness=-1)
    decoded = DecodedImage(pixels=image.astype(np.uint16), format="png", max_value=4095)
    labelled = LabelledImage(id="t", path=Path("t.png"), label=Label.BENIGN, patient_id="p",
                             laterality=laterality, rois=(Roi(x, y, 15, Label.BENIGN),))
    size = (256, 256)
    out = preprocess(decoded, size, laterality=laterality)[:, :, 0]
    [circle] = circles_in_input(labelled, decoded, size)
    # The largest saturated blob of the preprocessed image is the disc (a few chest-wall
    # pixels saturate too): its centroid must be the mapped circle's centre.
    saturated = (out >= out.max() - 1e-3).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(saturated)
    bright = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ys, xs = np.nonzero(bright)
    assert abs(xs.mean() - circle.x) < 2.0 and abs(ys.mean() - circle.y) < 2.0
    assert 0.5 * circle.radius < np.sqrt(bright.sum() / np.pi) < 1.5 * circle.radius
    if laterality is Laterality.RIGHT:  # mirrored so the chest wall is on the left
        assert circle.x < size[1] * 0.5
