"""Stochastic weight averaging of a patch trunk: which epochs are averaged, and the batch-norm
statistics re-estimated for the averaged weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.spot_images import spot_images

pytest.importorskip("keras")


class _Epochs:
    """A stand-in with a model's ``get_weights``: weight values that say their epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def get_weights(self) -> list[np.ndarray]:
        return [np.full((2, 2), self.epoch, np.float32), np.array([10.0 * self.epoch])]


def test_the_average_covers_exactly_the_epochs_from_its_start() -> None:
    from models.training import WeightAverage

    model, average = _Epochs(), WeightAverage(start=3)
    for epoch in range(1, 7):
        model.epoch = epoch
        average.add(epoch, model)

    assert (average.count, average.first, average.last) == (4, 3, 6)
    kernel, bias = average.weights()
    np.testing.assert_allclose(kernel, np.full((2, 2), 4.5))  # mean of 3, 4, 5, 6
    np.testing.assert_allclose(bias, [45.0])
    assert kernel.dtype == np.float32


def test_start_zero_averages_nothing() -> None:
    from models.training import WeightAverage

    average = WeightAverage(start=0)
    average.add(20, _Epochs())
    assert average.count == 0


def test_batch_statistics_follow_the_patches_not_the_old_values() -> None:
    import keras

    from models.training import refresh_batch_statistics

    # Nested, as a trunk sits inside the patch model; the default momentum (0.99) would
    # keep most of the old value after 40 batches: the refresh must not depend on it.
    trunk = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.BatchNormalization()])
    model = keras.Sequential([keras.Input((8, 8, 1)), trunk,
                              keras.layers.GlobalAveragePooling2D()])
    norm = trunk.layers[0]
    norm.moving_mean.assign(np.array([-5.0], np.float32))
    patches = np.random.default_rng(1).normal(3.0, 2.0, (640, 8, 8, 1)).astype(np.float32)
    weights_before = [np.array(w) for w in norm.get_weights()[:2]]  # gamma, beta

    refresh_batch_statistics(model, patches, batch_size=16)

    assert float(norm.moving_mean.numpy()[0]) == pytest.approx(3.0, abs=0.1)
    assert float(norm.moving_variance.numpy()[0]) == pytest.approx(4.0, rel=0.1)
    for old, new in zip(weights_before, norm.get_weights()[:2], strict=True):
        np.testing.assert_array_equal(old, new)  # only statistics change, never weights
    assert norm.momentum == 0.99


def test_an_averaged_trunk_ends_with_the_mean_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    from models.patches import PatchPlan
    from models.training import TrainOptions, train_trunk

    train, val = spot_images(16, 1, tmp_path), spot_images(8, 2, tmp_path)
    options = TrainOptions(epochs=4, patience=10, min_epochs=1, average_from=2,
                           widths=(8, 8, 8, 8, 8), plan=PatchPlan(patch=32, per_circle=4))
    seen: list[list[np.ndarray]] = []
    result = train_trunk(train, val, options, seed=3, name="trunk_1",  # type: ignore[arg-type]
                         on_epoch=lambda epoch, trunk: seen.append(trunk.get_weights()))

    assert result.averaged_epochs == (2, 4) and result.best_weights is not None
    final = result.trunk.get_weights()
    trainable = {id(w) for w in result.trunk.trainable_weights}
    for k, weight in enumerate(result.trunk.weights):
        if id(weight) in trainable:  # kernels, gammas, betas: the mean of epochs 2-4
            np.testing.assert_allclose(final[k], np.mean([s[k] for s in seen[1:]], axis=0),
                                       rtol=1e-5, atol=1e-6)
    best = seen[result.best_epoch - 1]
    for kept, original in zip(result.best_weights, best, strict=True):
        np.testing.assert_array_equal(kept, original)
