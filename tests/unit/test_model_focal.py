"""Focal loss in patch training (`TrainConfig.focal_gamma`, measured by `model_variants
--variants focal`): Keras's own focal cross-entropy when gamma > 0, plain cross-entropy at 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.spot_images import spot_images


def test_patch_loss_is_cross_entropy_at_gamma_0_and_focal_above() -> None:
    import keras

    from models.training import patch_loss

    plain, focal = patch_loss(0.0), patch_loss(2.0)

    assert type(plain) is keras.losses.CategoricalCrossentropy
    assert isinstance(focal, keras.losses.CategoricalFocalCrossentropy)
    config = focal.get_config()
    # Classes are balanced by the sample weights, so alpha must not weight them again.
    assert (config["gamma"], config["alpha"], config["label_smoothing"]) == (2.0, 1.0, 0.1)
    assert plain.get_config()["label_smoothing"] == 0.1
    # The focusing: a patch already scored right keeps less of its loss than one scored
    # wrong does (not far less: the smoothed targets' other-class terms, scored low, are
    # barely damped).
    target = np.array([[0.0, 1.0, 0.0]], np.float32)
    right = np.array([[0.05, 0.9, 0.05]], np.float32)
    wrong = np.array([[0.8, 0.1, 0.1]], np.float32)

    def kept(pred: np.ndarray) -> float:
        return float(focal(target, pred)) / float(plain(target, pred))

    assert kept(right) < 0.8 * kept(wrong) and kept(wrong) < 1.0


def test_train_config_focal_gamma_reaches_patch_training() -> None:
    from models.train_run import TrainConfig, patch_options

    assert patch_options(TrainConfig()).focal_gamma == 0.0  # today's loss unchanged
    assert patch_options(TrainConfig(focal_gamma=2.0)).focal_gamma == 2.0


def test_patch_training_with_focal_loss_runs(tmp_path: Path) -> None:
    from models import training
    from models.patches import PatchPlan

    train, val = spot_images(16, 1, tmp_path), spot_images(8, 2, tmp_path)

    def first_epoch_loss(gamma: float) -> float:
        options = training.TrainOptions(epochs=1, patience=10, min_epochs=1, focal_gamma=gamma,
                                        widths=(8, 8, 8, 8, 8), plan=PatchPlan(patch=32))
        result = training.train_trunk(train, val, options, seed=3, name="trunk_1")
        assert np.all(np.isfinite(result.history["loss"] + result.history["val_loss"]))
        return result.history["loss"][0]

    # Near a uniform start every (1 - p)^2 is about 0.44: the focal epoch's loss is well
    # below the cross-entropy epoch's from the same seed, so the focal loss was trained on.
    assert first_epoch_loss(2.0) < 0.8 * first_epoch_loss(0.0)
