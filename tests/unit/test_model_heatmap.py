"""Heatmaps come from the same forward pass as the probabilities, in [0, 1], stored small."""

from __future__ import annotations

import numpy as np
import pytest

from models.heatmaps import decode_png, encode_png, localisation_rate, peak_inside
from models.registry import ModelSpec
from models.roi_mapping import InputCircle
from shared.enums import Label
from shared.imaging.preprocess import PREPROCESSING_VERSION
from worker.classifier import Classifier


def test_grad_cam_heatmaps_for_a_plain_keras_model(tiny_model_spec: ModelSpec) -> None:
    classifier = Classifier(tiny_model_spec, batch_size=4,
                            preprocessing_version=PREPROCESSING_VERSION)
    batch = np.random.default_rng(0).random((3, *tiny_model_spec.input_size, 1)).astype(
        np.float32)
    forward = classifier.predict(batch)
    assert classifier.forward_passes == 1  # probabilities and heatmaps: one call
    assert forward.heatmaps is not None and forward.heatmaps.shape[0] == 3
    assert forward.heatmaps.ndim == 3 and forward.heatmaps.shape[1] > 1
    assert forward.heatmaps.min() >= 0.0 and forward.heatmaps.max() <= 1.0
    # Each image's map is its own: the same image alone gives the same map.
    alone = classifier.predict(batch[1:2])
    assert alone.heatmaps is not None
    np.testing.assert_allclose(alone.heatmaps[0], forward.heatmaps[1], atol=1e-4)


def test_png_round_trip_keeps_8_bits() -> None:
    heatmap = np.linspace(0, 1, 29 * 29, dtype=np.float32).reshape(29, 29)
    blob = encode_png(heatmap)
    assert len(blob) < 2000
    np.testing.assert_allclose(decode_png(blob), heatmap, atol=1 / 255)
    with pytest.raises(ValueError, match="2-D"):
        encode_png(np.zeros((2, 2, 2)))


def test_peak_inside_circle_uses_input_coordinates() -> None:
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[2, 5] = 1.0  # location (row 2, col 5): window centre x = 5*16+32, y = 2*16+32
    hit = InputCircle(x=112, y=64, radius=10, severity=Label.BENIGN)
    miss = InputCircle(x=300, y=300, radius=10, severity=Label.BENIGN)
    assert peak_inside(heatmap, [hit], patch=64)
    assert not peak_inside(heatmap, [miss], patch=64)
    rate, scored = localisation_rate([heatmap, heatmap, heatmap], [[hit], [miss], []], patch=64)
    assert (rate, scored) == (0.5, 2)
