"""Micro-batches: the same probabilities and heatmaps as one whole-batch step, less memory."""

from __future__ import annotations

import numpy as np
import pytest

from models.registry import ModelSpec, resolve_model
from shared.imaging.preprocess import PREPROCESSING_VERSION
from worker.classifier import Classifier


def _pair(spec: ModelSpec, batch: int, micro: int) -> tuple[Classifier, Classifier]:
    return (Classifier(spec, batch_size=batch, micro_batch=0,
                       preprocessing_version=PREPROCESSING_VERSION),
            Classifier(spec, batch_size=batch, micro_batch=micro,
                       preprocessing_version=PREPROCESSING_VERSION))


def test_batch_size_is_rounded_up_to_whole_steps(tiny_model_spec: ModelSpec) -> None:
    whole, stepped = _pair(tiny_model_spec, batch=5, micro=2)
    assert (whole.batch_size, whole.micro_batch) == (5, 0)
    assert (stepped.batch_size, stepped.micro_batch) == (6, 2)
    # A step as large as the batch is the whole batch.
    assert Classifier(tiny_model_spec, batch_size=4, micro_batch=4,
                      preprocessing_version=PREPROCESSING_VERSION).micro_batch == 0


@pytest.mark.parametrize("n", [1, 5])
def test_grad_cam_model_gives_the_same_outputs_in_steps(tiny_model_spec: ModelSpec,
                                                         n: int) -> None:
    whole, stepped = _pair(tiny_model_spec, batch=5, micro=2)
    batch = np.random.default_rng(n).random((n, *tiny_model_spec.input_size, 1)).astype(
        np.float32)
    a, b = whole.predict(batch), stepped.predict(batch)
    assert b.probabilities.shape == (n, 3) and stepped.forward_passes == 1
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
    assert a.heatmaps is not None and b.heatmaps is not None
    np.testing.assert_allclose(b.heatmaps, a.heatmaps, atol=1e-4)


def test_shipped_model_gives_the_same_outputs_in_steps() -> None:
    spec = resolve_model("default")
    whole, stepped = _pair(spec, batch=8, micro=4)
    rng = np.random.default_rng(3)
    batch = rng.random((6, *spec.input_size, 1)).astype(np.float32)
    batch[:, :, spec.input_size[1] // 2:] = 0.0  # background beside the "breast"
    a, b = whole.predict(batch), stepped.predict(batch)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
    assert a.heatmaps is not None and b.heatmaps is not None
    assert b.heatmaps.shape == a.heatmaps.shape == (6, *a.heatmaps.shape[1:])
    np.testing.assert_allclose(b.heatmaps, a.heatmaps, atol=1e-5)
