"""Which models `mammo models merge` pools, and what it refuses (the pooling itself is
exercised end to end in tests/integration/test_train_evaluate_run.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from models.merge import check_compatible
from models.registry import ModelSpec
from models.train_run import TrainConfig
from shared.errors import ConfigurationError


def _spec(directory: Path, version: str, **changes: Any) -> ModelSpec:
    config = TrainConfig(version=version, **changes)
    training = {**asdict(config), "best_epochs": [1] * config.folds}
    meta = {"name": "default", "version": version, "training": training,
            "training_data": {"sha256": "d" * 64}, "preprocessing_version": "2"}
    return ModelSpec("default", version, directory / version, "0" * 64,
                     ("normal", "benign", "malignant"), config.input_size, "2", meta)


def test_recipes_may_differ_where_the_folds_and_input_agree(tmp_path: Path) -> None:
    a = _spec(tmp_path, "1.4.0", finetune_epochs=8)
    b = _spec(tmp_path, "1.5.0", pretrain_epochs=20, finetune_epochs=0, members=2)
    assert [c.members for c in check_compatible([a, b])] == [1, 2]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"seed": 7}, "differ in seed"),
    ({"folds": 4}, "differ in folds"),
    ({"input_size": (256, 256)}, "differ in input_size"),
    ({"local_contrast_sigma": 24.0}, "differ in local_contrast_sigma"),
])
def test_other_folds_or_inputs_are_refused_with_the_reason(
        tmp_path: Path, changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        check_compatible([_spec(tmp_path, "1.4.0"), _spec(tmp_path, "1.5.0", **changes)])


def test_other_data_a_repeat_a_single_model_and_a_merge_are_refused(tmp_path: Path) -> None:
    a, b = _spec(tmp_path, "1.4.0"), _spec(tmp_path, "1.5.0")
    b.metadata["training_data"] = {"sha256": "e" * 64}
    with pytest.raises(ConfigurationError, match="differ in training data"):
        check_compatible([a, b])
    with pytest.raises(ConfigurationError, match="named twice"):
        check_compatible([a, a])
    with pytest.raises(ConfigurationError, match="at least two"):
        check_compatible([a])
    merged = _spec(tmp_path, "1.6.0")
    merged.metadata["merged_from"] = [{"version": "1.4.0"}, {"version": "1.5.0"}]
    with pytest.raises(ConfigurationError, match=r"itself a merge: merge its sources \(1.4.0"):
        check_compatible([a, merged])


def test_a_renamed_trunk_keeps_its_architecture_weights_and_outputs(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from models.architecture import build_trunk
    from models.merge import _renamed

    keras.utils.set_random_seed(3)
    source = build_trunk("trunk_1", widths=(4, 4, 8, 8, 8), stage_convs=2)
    # Two copies of one trunk: identical inner layer names side by side in one model, as
    # when two sources' trunks are pooled.
    copies = [_renamed(source, "trunk_2"), _renamed(source, "trunk_3")]
    assert [c.name for c in copies] == ["trunk_2", "trunk_3"]
    assert len(copies[0].layers) == len(source.layers)
    image = np.random.default_rng(0).random((1, 64, 64, 1)).astype("float32")
    inputs = keras.Input((64, 64, 1))
    pooled = keras.Model(inputs, keras.layers.Average()([c(inputs) for c in copies]))
    pooled.save(tmp_path / "pooled.keras")
    reloaded = keras.models.load_model(tmp_path / "pooled.keras", compile=False)
    expected = source.predict(image, verbose=0)
    np.testing.assert_allclose(reloaded.predict(image, verbose=0), expected, atol=1e-5)
