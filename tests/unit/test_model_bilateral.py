"""Reading a breast against the other breast: pairing, fitting, applying, nested validation."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics
from models.bilateral import (
    BilateralHead,
    PairedScore,
    apply_partners,
    bilateral_head,
    fit_bilateral,
    held_out_bilateral,
    partners,
)
from models.splits import patient_folds


def test_partners_pair_one_image_per_side_of_a_view_and_never_guess() -> None:
    keys = [("p1", "L", "MLO"), ("p1", "R", "MLO"),      # a pair
            ("p1", "L", "CC"),                           # CC without its right side
            ("p2", "L", "MLO"), ("p2", "L", "MLO"), ("p2", "R", "MLO"),  # repeat exposure
            ("p3", None, "MLO"), ("p3", "R", "MLO"),     # unknown side
            ("p4", "R", None), ("p4", "L", None)]        # unknown view on both: a pair
    assert partners(keys).tolist() == [1, 0, -1, -1, -1, -1, -1, -1, 9, 8]


def _confounded(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two breasts per patient sharing a patient-level offset (density, exposure); one
    breast of some patients has a finding. Returns (probs, labels, patients)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 1.5, n_patients)
    labels = np.zeros(2 * n_patients, np.int64)
    sick = rng.random(n_patients) < 0.4
    side = rng.integers(0, 2, n_patients)
    labels[2 * np.flatnonzero(sick) + side[sick]] = rng.integers(1, 3, int(sick.sum()))
    logit_a = np.repeat(offset, 2) + 1.5 * (labels > 0) + rng.normal(0, 0.5, 2 * n_patients)
    logit_m = np.repeat(offset, 2) + 1.5 * (labels == 2) + rng.normal(0, 0.5, 2 * n_patients)
    q_a, q_m = 1 / (1 + np.exp(-logit_a)), 1 / (1 + np.exp(-logit_m))
    p_m = np.minimum(q_a, q_m)
    probs = np.stack([1 - q_a, q_a - p_m, p_m], axis=-1)
    return probs, labels, np.repeat(np.arange(n_patients), 2)


def _keys(patients: np.ndarray) -> list[tuple[object, str | None, str | None]]:
    return [(int(p), "L" if i % 2 == 0 else "R", "MLO") for i, p in enumerate(patients)]


def test_a_shared_offset_is_subtracted_and_held_out_ranking_improves() -> None:
    probs, labels, patients = _confounded(150, seed=3)
    partner = partners(_keys(patients))
    head = fit_bilateral(probs, labels, partner)
    assert head.abnormal is not None and head.malignant is not None
    assert head.abnormal.partner < -0.3 and head.abnormal.own > 0  # the offset cancels
    folds = patient_folds(labels, patients, n_folds=5, seed=1)
    paired = held_out_bilateral(probs, labels, partner, folds)
    assert metrics.auc_abnormal(labels, paired) > metrics.auc_abnormal(labels, probs) + 0.05
    assert metrics.auc_malignant(labels, paired) > metrics.auc_malignant(labels, probs) + 0.03


def test_held_out_bilateral_never_fits_on_the_fold_it_scores() -> None:
    probs, labels, patients = _confounded(60, seed=4)
    partner = partners(_keys(patients))
    folds = patient_folds(labels, patients, n_folds=3, seed=2)
    nested = held_out_bilateral(probs, labels, partner, folds)
    train, test = folds[0]
    inside = np.zeros(len(labels), bool)
    inside[train] = True
    head = fit_bilateral(probs, labels, np.where(inside, partner, -1))
    expected = head.apply(probs[test], probs[partner[test]])
    np.testing.assert_allclose(nested[test], expected)
    # Flipping the held-out fold's labels changes nothing in its own predictions.
    flipped = labels.copy()
    flipped[test] = 2 - flipped[test]
    np.testing.assert_allclose(held_out_bilateral(probs, flipped, partner, folds)[test],
                               nested[test])


def test_applying_keeps_unpaired_images_and_valid_probabilities() -> None:
    head = BilateralHead(PairedScore(1.2, -0.9, -0.4), PairedScore(1.0, -0.3, -0.5))
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    out = apply_partners(probs, np.array([1, 0, -1]), head)
    np.testing.assert_allclose(out[2], probs[2])  # no partner: its own reading
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert (out >= 0).all() and (out[:, 2] <= 1 - out[:, 0] + 1e-12).all()
    # Against a calm partner the suspicious breast stands out more; against a suspicious
    # one the calm breast looks calmer still (hand-computed: 0.836 and 0.106).
    assert 1 - out[0, 0] == pytest.approx(0.836, abs=1e-3)
    assert 1 - out[1, 0] == pytest.approx(0.106, abs=1e-3)


def test_a_score_left_single_image_keeps_its_value() -> None:
    probs = np.array([[0.5, 0.2, 0.3], [0.7, 0.2, 0.1]])
    head = BilateralHead(PairedScore(1.0, -1.0, 0.0), None)
    out = head.apply(probs[:1], probs[1:])
    assert out[0, 2] == pytest.approx(min(0.3, 1 - out[0, 0]))
    assert head.scores == ("abnormal",)
    restored = bilateral_head({"bilateral": {"head": head.to_config()}})
    assert restored == head
    assert bilateral_head({"name": "old model"}) is None


def test_fitting_refuses_unknown_scores_and_data_without_pairs() -> None:
    probs, labels, patients = _confounded(10, seed=5)
    with pytest.raises(ValueError, match="unknown bilateral score"):
        fit_bilateral(probs, labels, partners(_keys(patients)), scores=("benign",))
    with pytest.raises(ValueError, match="no image has a partner"):
        fit_bilateral(probs, labels, np.full(len(labels), -1))
