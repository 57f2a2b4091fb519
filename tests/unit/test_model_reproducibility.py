"""A same-seed re-run is judged against the model's own bootstrap intervals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from models.model_card import render
from models.reproducibility import compare_runs
from models.train_run import alternative_flips, flip_names
from tests.helpers.model_meta import card_meta, model_meta


def test_rerun_inside_the_interval_half_width_is_within_noise() -> None:
    rerun = model_meta(auc_abnormal=0.65, auc_malignant=0.67)
    result = compare_runs(model_meta(), rerun)
    assert result["reproduced"] is True
    assert result["max_auc_difference"] == pytest.approx(0.05)
    assert result["ci_half_width"] == pytest.approx(0.07)
    by_metric = {r["metric"]: r for r in result["rows"]}
    assert by_metric["AUC abnormal"]["difference"] == pytest.approx(0.05)
    assert by_metric["AUC malignant, flips none, h"]["difference"] == pytest.approx(-0.03)
    assert result["rerun_minutes"] == 10.0 and result["verdict"].startswith("Within noise")


def test_rerun_beyond_the_half_width_is_reported_as_not_reproduced() -> None:
    result = compare_runs(model_meta(), model_meta(auc_malignant=0.78))
    assert result["reproduced"] is False and result["verdict"].startswith("NOT within noise")


def test_ablation_rows_inform_but_do_not_decide() -> None:
    rerun = model_meta()
    rerun["ablation"][0]["auc_abnormal"] = 0.70  # another head moved by 0.10
    result = compare_runs(model_meta(), rerun)
    assert result["reproduced"] is True and result["max_auc_difference"] == 0.0
    assert result["max_ablation_difference"] == pytest.approx(0.10)
    assert "ablation rows moved by up to 0.100" in result["verdict"]


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 8}, "seeds differ"),
    ({"training_data": {"sha256": "ef" * 32}}, "different data"),
])
def test_only_same_seed_same_data_runs_compare(change: dict[str, Any], message: str) -> None:
    rerun = {**copy.deepcopy(model_meta()), **change}
    with pytest.raises(ValueError, match=message):
        compare_runs(model_meta(), rerun)


def test_flip_alternatives_and_names() -> None:
    assert alternative_flips(((),)) == ((), (2,))
    assert alternative_flips(((), (2,))) == ((),)
    assert flip_names(((),)) == "none" and flip_names(((), (2,))) == "image + left-right"


def test_card_states_whether_a_rerun_was_recorded(tmp_path: Any) -> None:
    meta = card_meta()
    card = render(meta, tmp_path)
    assert "reproducibility is not verified" in card and "No test-time augmentation" in card
    assert "ECE interval lies above" not in card
    meta["validation"]["ci95"]["ece"] = [0.06, 0.10]  # above the 0.05 estimate
    assert "ECE interval lies above its own estimate" in render(meta, tmp_path)
    meta["reproducibility"] = compare_runs(meta, model_meta(auc_abnormal=0.62))
    card = render(meta, tmp_path)
    assert "Same-seed re-run" in card and "| AUC abnormal | 0.600 | 0.620 | 0.020 |" in card
    assert "Within noise" in card
