"""Whole-image fine-tuning: the trunk learns image labels through the shipped read-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.spot_images import spot_images

pytest.importorskip("keras")


def _abnormal_auc(trunk: object, data: object) -> float:
    from models import metrics
    from models.calibration import ABNORMAL_SCORE, EVIDENCE_NAMES
    from models.training import predict_maps

    evidence = predict_maps([trunk], data, patch=32)["evidence"]  # type: ignore[arg-type]
    labels = data.labels  # type: ignore[attr-defined]
    auc = metrics.auc(labels > 0, evidence[:, EVIDENCE_NAMES.index(ABNORMAL_SCORE)])
    assert auc is not None
    return auc


def test_finetuning_learns_image_labels_and_keeps_patch_statistics(tmp_path: Path) -> None:
    import keras

    from models.architecture import build_trunk
    from models.finetune import FinetuneOptions, finetune_on_images

    keras.utils.set_random_seed(5)
    train, test = spot_images(32, 1, tmp_path), spot_images(16, 2, tmp_path)
    trunk = build_trunk("trunk_1", widths=(8, 16, 16, 16, 16))
    for _ in range(30):  # batch statistics of these images, as patch training leaves some
        trunk(train.pixels.astype(np.float32)[..., np.newaxis], training=True)  # type: ignore[attr-defined]
    norms = [layer for layer in trunk.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    statistics = [np.array(w.numpy()) for layer in norms
                  for w in layer.non_trainable_weights]
    before = _abnormal_auc(trunk, test)

    losses = finetune_on_images(trunk, train, FinetuneOptions(epochs=15, learning_rate=1e-2),
                                patch=32, seed=7)  # type: ignore[arg-type]

    assert len(losses) == 15 and losses[-1] < losses[0]
    after = _abnormal_auc(trunk, test)  # images it never saw
    assert after >= 0.85 and after > before + 0.3
    # Batch normalisation kept the statistics patch training learnt, and is trainable again.
    for old, new in zip(statistics, [w for layer in norms for w in layer.non_trainable_weights],
                        strict=True):
        np.testing.assert_array_equal(old, np.array(new.numpy()))
    assert all(layer.trainable for layer in norms)


def test_zero_epochs_leave_the_trunk_as_it_was(tmp_path: Path) -> None:
    from models.architecture import build_trunk
    from models.finetune import FinetuneOptions, finetune_on_images

    trunk = build_trunk("trunk_1", widths=(8, 8, 8, 8, 8))
    weights = [np.array(w) for w in trunk.get_weights()]
    assert finetune_on_images(trunk, spot_images(4, 3, tmp_path), FinetuneOptions(epochs=0),
                              patch=32, seed=1) == []  # type: ignore[arg-type]
    for old, new in zip(weights, trunk.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
