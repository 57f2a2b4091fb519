"""MixUp in patch training (`TrainConfig.mixup`, measured by `model_variants --variants
mixup`): each patch, its target and its class weight blended with one partner's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.spot_images import spot_images


def test_mix_up_blends_pixels_targets_and_weights_by_the_same_share() -> None:
    from models.training import mix_up

    n = 64
    x = np.stack([np.full((4, 4, 1), float(i)) for i in range(n)]).astype(np.float32)
    targets = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    weights = np.arange(n, dtype=np.float32) + 1
    mx, mt, mw = mix_up(x, targets, weights, 0.2, np.random.default_rng(0))

    assert mx.shape == x.shape and mt.shape == targets.shape and mw.shape == weights.shape
    np.testing.assert_allclose(mt.sum(axis=1), 1.0, rtol=1e-6)  # still a distribution
    # Pixel i holds s*i + (1-s)*j: the weight, which is i+1 blended alike, tells the same s.
    np.testing.assert_allclose(mx[:, 0, 0, 0] + 1, mw, rtol=1e-5)
    assert np.mean((mt > 0) & (mt < 1)) > 0 and not np.array_equal(mx, x)


def test_patch_training_with_mixup_runs_and_is_reproducible(tmp_path: Path) -> None:
    from models import training
    from models.patches import PatchPlan

    train, val = spot_images(16, 1, tmp_path), spot_images(8, 2, tmp_path)
    options = training.TrainOptions(epochs=2, patience=10, min_epochs=1, mixup=0.2,
                                    widths=(8, 8, 8, 8, 8), plan=PatchPlan(patch=32))
    first = training.train_trunk(train, val, options, seed=3, name="trunk_1")
    second = training.train_trunk(train, val, options, seed=3, name="trunk_1")

    assert len(first.history["loss"]) == 2
    assert np.all(np.isfinite(first.history["loss"]))
    np.testing.assert_allclose(first.history["loss"], second.history["loss"], rtol=1e-4)
