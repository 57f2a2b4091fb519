"""The evaluate metrics on examples small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics

# 4 images: truth normal, normal, benign, malignant.
TRUTH = np.array([0, 0, 1, 2])
PROBS = np.array([
    [0.8, 0.1, 0.1],   # abnormal score 0.2, predicted normal (right)
    [0.4, 0.5, 0.1],   # abnormal score 0.6, predicted benign (wrong)
    [0.3, 0.6, 0.1],   # abnormal score 0.7, predicted benign (right)
    [0.5, 0.1, 0.4],   # abnormal score 0.5, predicted normal (wrong)
])


def test_confusion_matrix_rows_are_truth_columns_are_predictions() -> None:
    assert metrics.confusion(TRUTH, PROBS) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_auc_abnormal_counts_ordered_pairs() -> None:
    # Abnormal scores: normals 0.2, 0.6; abnormals 0.7, 0.5. Pairs (abn > norm):
    # 0.7>0.2, 0.7>0.6, 0.5>0.2 yes; 0.5>0.6 no -> 3/4.
    assert metrics.auc_abnormal(TRUTH, PROBS) == pytest.approx(0.75)


def test_auc_malignant_scores_by_p_malignant() -> None:
    # P(malignant): rest 0.1, 0.1, 0.1; malignant 0.4 -> perfectly ranked.
    assert metrics.auc_malignant(TRUTH, PROBS) == pytest.approx(1.0)


def test_auc_is_none_when_one_class_is_missing() -> None:
    assert metrics.auc_malignant(np.array([0, 1]), PROBS[:2]) is None


def test_ece_by_hand() -> None:
    # Confidences 0.8 (right), 0.5 (wrong), 0.6 (right), 0.5 (wrong).
    # Bins: (0.4,0.5] holds 0.5, 0.5 -> acc 0, conf 0.5 -> |0-0.5| * 2/4 = 0.25
    #       (0.5,0.6] holds 0.6 -> acc 1, conf 0.6 -> 0.4 * 1/4 = 0.10
    #       (0.7,0.8] holds 0.8 -> acc 1, conf 0.8 -> 0.2 * 1/4 = 0.05
    assert metrics.expected_calibration_error(TRUTH, PROBS) == pytest.approx(0.40)


def test_sensitivity_at_90_specificity() -> None:
    truth = np.array([0] * 10 + [1] * 4)
    abnormal = np.r_[np.linspace(0.0, 0.45, 10), [0.9, 0.8, 0.3, 0.2]]
    probs = np.stack([1 - abnormal, abnormal, np.zeros_like(abnormal)], axis=1)
    # At most 1 false positive of 10 (the normal at 0.45): threshold 0.45 catches 0.9 and 0.8.
    assert metrics.sensitivity_at_specificity(truth, probs) == pytest.approx(0.5)


def test_summary_has_the_contract_keys_in_order() -> None:
    assert list(metrics.summary(TRUTH, PROBS)) == [
        "n", "accuracy", "confusion_matrix", "auc_abnormal", "auc_malignant",
        "sensitivity_at_90_specificity", "ece"]
    assert metrics.summary(TRUTH, PROBS)["accuracy"] == pytest.approx(0.5)


def test_bootstrap_resamples_patients_not_images() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 20)
    abnormal = np.clip(truth * 0.3 + rng.uniform(0, 0.7, 40), 0, 1)
    probs = np.stack([1 - abnormal, abnormal, np.zeros(40)], axis=1)
    patients = np.repeat(np.arange(20), 2)  # two images per patient
    intervals = metrics.bootstrap_intervals(truth, probs, patients, rounds=200, seed=1)
    low, high = intervals["auc_abnormal"] or (0.0, 0.0)
    point = metrics.auc_abnormal(truth, probs) or 0.0
    assert low < point < high and high - low < 0.5
    assert intervals["auc_malignant"] is None  # no malignant image: no interval



def test_the_ece_interval_contains_its_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Perfectly calibrated in each of its three bins (15 of 20 right at confidence 0.75, 19
    # of 20 at 0.95, 9 of 10 at 0.9): ECE 0, while nearly every resample's ECE is above 0,
    # so a percentile interval misses the estimate.
    truth = np.array([0] * 15 + [1] * 5 + [0] * 19 + [1] + [0] * 9 + [1])
    probs = np.array([[0.75, 0.15, 0.10]] * 20 + [[0.95, 0.03, 0.02]] * 20
                     + [[0.9, 0.05, 0.05]] * 10)
    patients = np.random.default_rng(0).permutation(50) // 2
    estimate = metrics.expected_calibration_error(truth, probs)
    assert estimate == pytest.approx(0.0)
    low, high = metrics.bootstrap_intervals(truth, probs, patients, rounds=200, seed=3)["ece"]
    assert low <= estimate <= high and high > 0.02
    # The plain percentile interval (what ECE had) lies above it; the other metrics keep it.
    fixed = metrics.bootstrap_intervals(truth, probs, patients, rounds=200, seed=3)
    monkeypatch.setattr(metrics, "BIASED_UNDER_RESAMPLING", frozenset())
    plain = metrics.bootstrap_intervals(truth, probs, patients, rounds=200, seed=3)
    assert plain["ece"] is not None and plain["ece"][0] > estimate
    assert {k: v for k, v in plain.items() if k != "ece"} == {
        k: v for k, v in fixed.items() if k != "ece"}


def test_the_card_names_each_confusion_matrix_by_its_reading_and_figure() -> None:
    from models.model_card import render
    from models.registry import resolve_model

    spec = resolve_model("default:1.8.0")
    card = render(spec.metadata, spec.directory)
    alone = spec.metadata["validation"]["confusion_matrix"]
    paired = spec.metadata["bilateral"]["validation"]["confusion_matrix"]
    assert alone != paired
    # Columns: the label where the figures record the rule they count, else the top class.
    columns = ("the label" if spec.metadata["validation"].get("label_rule")
               else "the most probable class")
    assert (f"Confusion matrix, each image alone (rows truth normal/benign/malignant, columns "
            f"{columns}; the figure `confusion_matrix.png`): {alone}.") in card
    assert "Confusion matrix, read with the other breast (" in card
    assert f"the reading the targets below are checked on, not plotted): {paired}." in card
    assert "`confusion_matrix.png` (held-out predictions, each image alone)" in card
