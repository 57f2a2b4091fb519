"""Contrastive pretraining: the loss on hand-computed pairs, the views, the trunk it trains."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.spot_images import spot_images

pytest.importorskip("keras")


def _loss(first: list[list[float]], second: list[list[float]], temperature: float) -> np.ndarray:
    from models.pretraining import nt_xent

    pred = np.concatenate([np.array(first, np.float32), np.array(second, np.float32)], axis=1)
    return np.asarray(nt_xent(temperature)(np.zeros((len(first), 1), np.float32), pred))


def test_nt_xent_on_hand_computed_pairs() -> None:
    # Two pairs, each view equal to its partner: view 0 (e1) sees its partner at similarity 1
    # and the two e2 views at 0, so its loss is -log(e / (e + 2)); all four views alike.
    matched = _loss([[1, 0], [0, 1]], [[1, 0], [0, 1]], 1.0)
    np.testing.assert_allclose(matched, [math.log(1 + 2 / math.e)] * 2, rtol=1e-5)
    # Partners swapped: each view's partner is orthogonal and a stranger is identical.
    swapped = _loss([[1, 0], [0, 1]], [[0, 1], [1, 0]], 1.0)
    np.testing.assert_allclose(swapped, [math.log(2 + math.e)] * 2, rtol=1e-5)
    # Length does not matter (cosine similarity); a lower temperature sharpens the choice.
    np.testing.assert_allclose(_loss([[3, 0], [0, 2]], [[5, 0], [0, 1]], 1.0), matched,
                               rtol=1e-5)
    np.testing.assert_allclose(_loss([[1, 0], [0, 1]], [[1, 0], [0, 1]], 0.5),
                               [math.log(1 + 2 / math.e**2)] * 2, rtol=1e-5)


def test_views_of_one_place_match_each_other_not_other_places(tmp_path: Path) -> None:
    from models.pretraining import PretrainOptions, view_pairs

    data = spot_images(8, 1, tmp_path)
    # A brightness of its own per image, so a view tells which breast it came from.
    data.pixels[:] = (data.pixels.astype(np.float32)
                      * np.linspace(0.3, 1.0, 8)[:, None, None]).astype(np.float16)
    plain = PretrainOptions(pairs_per_epoch=64, shift=0.0, intensity_jitter=0.0)
    first, second = view_pairs(data, plain, 32, np.random.default_rng(3))
    assert first.shape == second.shape == (64, 32, 32, 1)
    assert first.min() >= 0.0 and first.max() <= 1.0
    means = first.mean(axis=(1, 2, 3)), second.mean(axis=(1, 2, 3))
    partner_gap = np.abs(means[0] - means[1]).mean()
    stranger_gap = np.abs(means[0] - np.roll(means[1], 1)).mean()
    assert partner_gap < stranger_gap / 3
    # With the default jitter the two views of a pair differ (that is what is learnt from).
    jittered = view_pairs(data, PretrainOptions(pairs_per_epoch=64), 32,
                          np.random.default_rng(3))
    assert np.abs(jittered[0] - jittered[1]).mean() > 0.02


def test_pretraining_trains_the_feature_layers_not_the_output(tmp_path: Path) -> None:
    from models.pretraining import PretrainOptions, pretrained_trunk

    options = PretrainOptions(epochs=4, pairs_per_epoch=256, batch_size=64,
                              learning_rate=3e-3)
    data = spot_images(12, 2, tmp_path)
    fresh, _ = pretrained_trunk("trunk_1", (8, 16, 16, 16, 16), data,
                                PretrainOptions(epochs=0), patch=32, seed=4)
    trunk, losses = pretrained_trunk("trunk_1", (8, 16, 16, 16, 16), data, options,
                                     patch=32, seed=4)
    assert len(losses) == 4
    assert losses[0] < math.log(2 * 64 - 1) + 0.2  # starts near chance among 127 others
    assert losses[-1] < losses[0]
    # Same seed, same initial weights: the first convolution moved, the 3-class output
    # convolution (never in the contrastive model) did not.
    first_conv = trunk.layers[0].get_weights()[0]
    assert not np.allclose(first_conv, fresh.layers[0].get_weights()[0])
    for old, new in zip(fresh.layers[-1].get_weights(), trunk.layers[-1].get_weights(),
                        strict=True):
        np.testing.assert_array_equal(old, new)
