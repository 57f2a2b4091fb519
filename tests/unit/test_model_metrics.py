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

