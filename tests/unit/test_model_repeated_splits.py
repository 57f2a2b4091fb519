"""The repeated-split record: the recorded recipe, the spread, and how the card shows it."""

from __future__ import annotations

from typing import Any

import pytest

from models.model_card import render
from models.repeated_splits import from_runs, merge, recipe, spread
from models.train_run import TrainConfig
from tests.helpers.model_meta import card_meta


def _row(seed: int, abnormal: float, malignant: float, baseline: float) -> dict[str, Any]:
    return {"seed": seed, "source": "re-run", "auc_abnormal": abnormal,
            "auc_malignant": malignant, "sensitivity_at_90_specificity": None, "ece": 0.05,
            "localisation": 0.3, "baseline_auc_abnormal": baseline,
            "baseline_auc_malignant": baseline}


def test_recipe_is_the_recorded_training_config_with_tuples_back() -> None:
    # A model trained before --members, --local-contrast, --bilateral, --finetune-epochs,
    # --pretrain-epochs, --finetune-locations and --stage-convs existed records none of them.
    training = {"name": "default", "version": "1.2.0", "input_size": [512, 512], "folds": 5,
                "seed": 7, "epochs": 36, "patience": 12, "patch": 64,
                "widths": [24, 48, 96, 144, 192], "bootstrap_rounds": 1000,
                "max_pixels": 80_000_000, "tta_flips": [[]], "command": "mammo train X",
                "best_epochs": [1, 2], "seconds": 60.0, "machine": "x86_64"}
    config = recipe({"training": training})
    assert config == TrainConfig(name="default", version="1.2.0", input_size=(512, 512),
                                 folds=5, seed=7, epochs=36, patience=12, patch=64,
                                 widths=(24, 48, 96, 144, 192), bootstrap_rounds=1000,
                                 max_pixels=80_000_000, tta_flips=((),), members=1,
                                 local_contrast_sigma=None, bilateral=(), finetune_epochs=0,
                                 pretrain_epochs=0, finetune_location_weight=0.0,
                                 stage_convs=1, command="mammo train X")
    later = recipe({"training": {**training, "members": 2, "local_contrast_sigma": 24.0,
                                 "tta_flips": [[], [2]], "bilateral": ["abnormal"],
                                 "stage_convs": 2}})
    assert (later.members, later.local_contrast_sigma, later.tta_flips, later.bilateral,
            later.stage_convs) == (2, 24.0, ((), (2,)), ("abnormal",), 2)


def test_spread_is_mean_sample_sd_and_range_over_splits() -> None:
    rows = [_row(1, 0.60, 0.70, 0.55), _row(2, 0.50, 0.60, 0.50), _row(3, 0.70, 0.50, 0.60)]
    result = spread(rows)
    assert result["auc_abnormal"] == pytest.approx(
        {"mean": 0.60, "sd": 0.10, "min": 0.50, "max": 0.70})
    assert result["auc_malignant"]["mean"] == pytest.approx(0.60)
    assert result["sensitivity_at_90_specificity"] is None  # undefined everywhere
    assert spread(rows[:1])["ece"] == {"mean": 0.05, "sd": 0.0, "min": 0.05, "max": 0.05}


def test_card_shows_the_splits_and_tempers_its_headline(tmp_path: Any) -> None:
    meta = card_meta()
    card = render(meta, tmp_path)
    assert "## Repeated patient splits" not in card
    assert "`mammo models repeat-cv` records that" in card
    rows = [{**_row(7, 0.60, 0.70, 0.55), "source": "this model"},
            _row(8, 0.50, 0.60, 0.58), _row(9, 0.55, 0.65, 0.50)]
    meta["repeated_splits"] = {"date": "2026-12-01", "folds": 2, "rows": rows,
                               "spread": spread(rows)}
    card = render(meta, tmp_path)
    assert "## Repeated patient splits" in card
    assert "| 7 | this model | 0.600 | 0.700 | n/a | 0.050 | 0.300 | 0.550 | 0.550 |" in card
    assert "- AUC abnormal: mean 0.550 (sd 0.050; 0.500-0.600)" in card
    # Seed 8's CNN loses to the baseline on abnormal-vs-normal.
    assert "beat the baseline on both AUCs on 2 of 3 splits" in card
    assert "one of 3 patient splits measured" in card and "averaged 0.55" in card


def test_merge_grows_the_record_split_by_split_and_a_seed_run_again_replaces_its_row() -> None:
    own = {**_row(7, 0.60, 0.70, 0.55), "source": "this model"}
    first = {"date": "2026-12-01", "folds": 5,
             "rows": [own, _row(8, 0.50, 0.60, 0.50), _row(9, 0.70, 0.50, 0.60)]}
    first["spread"] = spread(first["rows"])
    assert merge(None, first) == first
    later = [own, {**_row(9, 0.40, 0.40, 0.40), "date": "2026-12-02"},
             {**_row(10, 0.80, 0.80, 0.40), "date": "2026-12-02"}]
    merged = merge(first, {"date": "2026-12-02", "folds": 5, "rows": later,
                           "spread": spread(later)})
    # The own row stays first; seed 8 is kept with the date it was measured; seed 9's new
    # figures replace the old; the spread covers all four splits.
    assert [(r["seed"], r.get("date")) for r in merged["rows"]] == [
        (7, None), (8, "2026-12-01"), (9, "2026-12-02"), (10, "2026-12-02")]
    assert merged["rows"][2]["auc_abnormal"] == 0.40
    assert merged["date"] == "2026-12-02"
    assert merged["spread"]["auc_abnormal"]["mean"] == pytest.approx((0.6 + 0.5 + 0.4 + 0.8) / 4)


def test_card_dates_each_re_run_split(tmp_path: Any) -> None:
    meta = card_meta()
    rows = [{**_row(7, 0.60, 0.70, 0.55), "source": "this model"},
            {**_row(8, 0.50, 0.60, 0.58), "date": "2026-12-02"}]
    meta["repeated_splits"] = {"date": "2026-12-02", "folds": 2, "rows": rows,
                               "spread": spread(rows)}
    card = render(meta, tmp_path)
    assert "| 8 | re-run, 2026-12-02 | 0.500 |" in card and "| 7 | this model | 0.600 |" in card
    assert "last on 2026-12-02" in card


def _model(seed: int, abnormal: float, **training: Any) -> dict[str, Any]:
    config = {"name": "default", "version": "1.4.0", "input_size": [512, 512], "folds": 5,
              "seed": seed, "epochs": 36, "patience": 12, "patch": 64,
              "widths": [24, 48, 96, 144, 192], "bootstrap_rounds": 1000,
              "max_pixels": 80_000_000, "tta_flips": [[]], "finetune_epochs": 8,
              "command": f"mammo train X --seed {seed}", "seconds": 930.0, **training}
    figures = {"auc_abnormal": abnormal, "auc_malignant": 0.6,
               "sensitivity_at_90_specificity": 0.2, "ece": 0.04}
    return {"seed": seed, "training": config, "training_data": {"sha256": "d" * 64},
            "validation": figures, "baseline": {**figures, "auc_abnormal": 0.5},
            "localisation": {"peak_inside_circle": 0.4}}


def test_runs_of_the_same_recipe_become_splits_and_stay_when_the_record_grows() -> None:
    own = _model(7, 0.60)
    result = from_runs(own, [_model(8, 0.50), _model(9, 0.70)], ["2026-12-01", "2026-12-02"])
    assert [(r["seed"], r["source"], r.get("date"), r.get("minutes")) for r in result["rows"]] \
        == [(7, "this model", None, None), (8, "training run", "2026-12-01", 15.5),
            (9, "training run", "2026-12-02", 15.5)]
    assert result["spread"]["auc_abnormal"]["mean"] == pytest.approx(0.60)
    assert result["rows"][1]["baseline_auc_abnormal"] == 0.5
    # A later repeat-cv keeps them, as it keeps its own re-run rows.
    later = [result["rows"][0], {**_row(10, 0.8, 0.8, 0.4), "date": "2026-12-03"}]
    grown = merge(result, {"date": "2026-12-03", "folds": 5, "rows": later,
                           "spread": spread(later)})
    assert [r["seed"] for r in grown["rows"]] == [7, 8, 9, 10]


def test_runs_of_another_recipe_or_data_or_seed_are_refused() -> None:
    own = _model(7, 0.60)
    with pytest.raises(ValueError, match="differs from this model in finetune_epochs"):
        from_runs(own, [_model(8, 0.5, finetune_epochs=0)], ["2026-12-01"])
    other_data = {**_model(8, 0.5), "training_data": {"sha256": "e" * 64}}
    with pytest.raises(ValueError, match="differs from this model in training data"):
        from_runs(own, [other_data], ["2026-12-01"])
    with pytest.raises(ValueError, match="own split"):
        from_runs(own, [_model(7, 0.5)], ["2026-12-01"])
    with pytest.raises(ValueError, match="repeats a seed"):
        from_runs(own, [_model(8, 0.5), _model(8, 0.6)], ["2026-12-01", "2026-12-01"])
