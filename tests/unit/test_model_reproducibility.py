"""A same-seed re-run is judged against the model's own bootstrap intervals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from models.model_card import render
from models.reproducibility import compare_runs
from models.train_run import alternative_flips, flip_names


def _meta(auc_abnormal: float = 0.60, auc_malignant: float = 0.70,
          seed: int = 7) -> dict[str, Any]:
    return {
        "name": "default", "version": "9.9.9", "sha256": "ab" * 32, "seed": seed,
        "training_data": {"sha256": "cd" * 32},
        "training": {"seconds": 600.0, "best_epochs": [3, 4]},
        "validation": {"auc_abnormal": auc_abnormal, "auc_malignant": auc_malignant,
                       "sensitivity_at_90_specificity": 0.2, "accuracy": 0.6, "ece": 0.05,
                       # half-widths 0.06 and 0.08: the yardstick is their mean, 0.07
                       "ci95": {"auc_abnormal": [0.54, 0.66],
                                "auc_malignant": [0.62, 0.78]}},
        "localisation": {"peak_inside_circle": 0.4, "images": 10},
        "ablation": [{"flips": "none", "head": "h", "auc_abnormal": auc_abnormal,
                      "auc_malignant": auc_malignant, "ece": 0.05, "fold_mean": [None, None]}],
    }


def test_rerun_inside_the_interval_half_width_is_within_noise() -> None:
    rerun = _meta(auc_abnormal=0.65, auc_malignant=0.67)
    result = compare_runs(_meta(), rerun)
    assert result["reproduced"] is True
    assert result["max_auc_difference"] == pytest.approx(0.05)
    assert result["ci_half_width"] == pytest.approx(0.07)
    by_metric = {r["metric"]: r for r in result["rows"]}
    assert by_metric["AUC abnormal"]["difference"] == pytest.approx(0.05)
    assert by_metric["AUC malignant, flips none, h"]["difference"] == pytest.approx(-0.03)
    assert result["rerun_minutes"] == 10.0 and result["verdict"].startswith("Within noise")


def test_rerun_beyond_the_half_width_is_reported_as_not_reproduced() -> None:
    result = compare_runs(_meta(), _meta(auc_malignant=0.78))
    assert result["reproduced"] is False and result["verdict"].startswith("NOT within noise")


def test_ablation_rows_inform_but_do_not_decide() -> None:
    rerun = _meta()
    rerun["ablation"][0]["auc_abnormal"] = 0.70  # another head moved by 0.10
    result = compare_runs(_meta(), rerun)
    assert result["reproduced"] is True and result["max_auc_difference"] == 0.0
    assert result["max_ablation_difference"] == pytest.approx(0.10)
    assert "ablation rows moved by up to 0.100" in result["verdict"]


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 8}, "seeds differ"),
    ({"training_data": {"sha256": "ef" * 32}}, "different data"),
])
def test_only_same_seed_same_data_runs_compare(change: dict[str, Any], message: str) -> None:
    rerun = {**copy.deepcopy(_meta()), **change}
    with pytest.raises(ValueError, match=message):
        compare_runs(_meta(), rerun)


def test_flip_alternatives_and_names() -> None:
    assert alternative_flips(((),)) == ((), (2,))
    assert alternative_flips(((), (2,))) == ((),)
    assert flip_names(((),)) == "none" and flip_names(((), (2,))) == "image + left-right"


def test_card_states_whether_a_rerun_was_recorded(tmp_path: Any) -> None:
    meta = {**_meta(), "classes": ["normal", "benign", "malignant"], "input_size": [512, 512],
            "preprocessing_version": "2", "architecture": "a", "ensemble_members": 2,
            "patch": 64, "pixel_size_mm": 0.2, "tta_flips": [[]], "head": {}}
    meta["validation"].update(n=10, confusion_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    meta["baseline"] = copy.deepcopy(meta["validation"])
    meta["training_data"].update(images=10, patients=5, classes={"normal": 10})
    meta["training"].update(folds=2, bootstrap_rounds=20, machine="x86_64, 2 CPU cores")
    card = render(meta, tmp_path)
    assert "reproducibility is not verified" in card and "No test-time augmentation" in card
    assert "ECE interval lies above" not in card
    meta["validation"]["ci95"]["ece"] = [0.06, 0.10]  # above the 0.05 estimate
    assert "ECE interval lies above its own estimate" in render(meta, tmp_path)
    meta["reproducibility"] = compare_runs(meta, _meta(auc_abnormal=0.62))
    card = render(meta, tmp_path)
    assert "Same-seed re-run" in card and "| AUC abnormal | 0.600 | 0.620 | 0.020 |" in card
    assert "Within noise" in card
