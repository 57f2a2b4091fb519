"""The trunk's shape: what ``--stage-convs`` changes and what it must leave alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.architecture import STRIDE, build_trunk
from models.model_card import render
from tests.helpers.model_meta import card_meta


def _convs(trunk: object) -> list[tuple[int, int]]:
    return [(layer.kernel_size[0], layer.filters) for layer in trunk.layers  # type: ignore[attr-defined]
            if type(layer).__name__ == "Conv2D"]


def test_deeper_trunk_stacks_convolutions_and_keeps_the_map_geometry() -> None:
    widths = (4, 6, 8, 10, 12)
    plain, deep = build_trunk("a", widths=widths), build_trunk("b", widths=widths, stage_convs=2)
    # One convolution per stage is 1.7.0's trunk layer for layer (and that of every model
    # before it): --stage-convs 1 must keep reproducing it.
    assert _convs(plain) == [(3, 4), (3, 6), (3, 8), (3, 10), (3, 12), (1, 3)]
    assert _convs(deep) == [(3, 4), (3, 6), (3, 6), (3, 8), (3, 8), (3, 10), (3, 10), (3, 12),
                            (1, 3)]
    image = np.random.default_rng(0).random((1, 96, 128, 1), dtype=np.float32)
    for trunk in (plain, deep):
        assert trunk(image).shape == (1, 96 // STRIDE, 128 // STRIDE, 3)
    assert deep.count_params() > plain.count_params()


def test_card_names_the_depth_only_beyond_one_convolution_per_stage(tmp_path: Path) -> None:
    meta = card_meta()
    meta["training"]["stage_convs"] = 1
    assert "convolutions in each pooled stage" not in render(meta, tmp_path)
    meta["training"]["stage_convs"] = 2
    assert "one per cross-validation fold; 2 convolutions in each pooled stage" in render(
        meta, tmp_path)
