"""How many normal patches patch training sees: the ratio per lesion patch, and the hard
negatives mined per image (`mammo train --negatives-ratio / --hard-negatives`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.spot_images import spot_images


@pytest.mark.parametrize("ratio", [2.0, 5.0])
def test_normal_patches_follow_the_ratio(tmp_path: Path, ratio: float) -> None:
    from models.patches import PatchPlan, sample_patches

    data = spot_images(16, 1, tmp_path)  # 8 abnormal images without circles
    plan = PatchPlan(patch=32, negatives_ratio=ratio)
    _, labels = sample_patches(data, plan, np.random.default_rng(0))

    lesion = int((labels > 0).sum())
    assert lesion == 8 * plan.weak_per_image
    assert int((labels == 0).sum()) == int(lesion * ratio)


def test_hard_negatives_replace_at_most_half_the_normal_patches(tmp_path: Path) -> None:
    from models.patches import PatchPlan, sample_patches

    data = spot_images(16, 1, tmp_path)
    plan = PatchPlan(patch=32, negatives_ratio=2.0, augment=False)
    hard = [(0, 64.0, 64.0)] * 1000  # far more than half of the 64 normal patches
    patches, labels = sample_patches(data, plan, np.random.default_rng(0), hard)

    assert int((labels == 0).sum()) == 64
    centre = np.asarray(data.pixels[0], np.float32)[48:80, 48:80]
    mined = [p for p, c in zip(patches[..., 0], labels, strict=True)
             if c == 0 and np.array_equal(p, centre)]
    assert len(mined) == 32


def test_patch_training_mines_the_configured_number_per_normal_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models import training
    from models.patches import PatchPlan
    from shared.enums import Label

    calls: list[tuple[int, list[tuple[int, float, float]]]] = []
    real = training.mine_hard_negatives

    def recording(trunk: Any, data: Any, patch: int, per_image: int
                  ) -> list[tuple[int, float, float]]:
        points = real(trunk, data, patch, per_image)
        calls.append((per_image, points))
        return points

    monkeypatch.setattr(training, "mine_hard_negatives", recording)
    train, val = spot_images(16, 1, tmp_path), spot_images(8, 2, tmp_path)
    options = training.TrainOptions(epochs=2, patience=10, min_epochs=1, mine_from=1,
                                    mine_every=1, hard_negatives=5, widths=(8, 8, 8, 8, 8),
                                    plan=PatchPlan(patch=32, per_circle=4))
    training.train_trunk(train, val, options, seed=3, name="trunk_1")

    normal = {i for i, image in enumerate(train.images) if image.label is Label.NORMAL}
    assert [per_image for per_image, _ in calls] == [5, 5]  # epochs 1 and 2
    for _, points in calls:
        per_image_found = Counter(i for i, _, _ in points)
        assert set(per_image_found) == normal  # abnormal images without circles: never
        assert set(per_image_found.values()) == {5}
