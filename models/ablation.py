"""What the shipped choices buy, measured in the same training run on the same folds.

The head and the test-time flips are cheap to vary once the fold trunks exist, so every
``mammo train`` run also scores alternatives on the same held-out evidence: the 1.0.0 head
(multinomial logistic regression over all nine evidence features), the strongest single
location instead of the top-k mean, and evidence without test-time flips. Each head is
fitted on the other folds' held-out evidence, exactly like the shipped one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models import metrics
from models.calibration import ABNORMAL_SCORE, MALIGNANT_SCORE, fit_head

Folds = Sequence[tuple[np.ndarray, np.ndarray]]
Predict = Callable[[np.ndarray], np.ndarray]
Fitter = Callable[[np.ndarray, np.ndarray], Predict]


def _multinomial(evidence: np.ndarray, labels: np.ndarray) -> Predict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    model.fit(evidence, labels)

    def predict(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 3))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    return predict


def _ranking(scores: tuple[str, str]) -> Fitter:
    def fit(evidence: np.ndarray, labels: np.ndarray) -> Predict:
        return fit_head(evidence, labels, scores=scores).probabilities

    return fit


shipped_head = _ranking((ABNORMAL_SCORE, MALIGNANT_SCORE))
HEADS: dict[str, Fitter] = {
    "top-5 mean, Platt (shipped head)": shipped_head,
    "strongest location, Platt": _ranking(("max_abnormal", "max_malignant")),
    "multinomial logistic on 9 features (1.0.0 head)": _multinomial,
}


def held_out_predictions(evidence: np.ndarray, labels: np.ndarray, folds: Folds,
                         fit: Fitter) -> np.ndarray:
    """Each fold's probabilities from a head fitted on the other folds' held-out evidence."""
    probs = np.zeros((len(labels), 3))
    for train, test in folds:
        probs[test] = fit(evidence[train], labels[train])(evidence[test])
    return probs


def compare(evidence_by_tta: dict[str, np.ndarray], labels: np.ndarray,
            folds: Folds) -> list[dict[str, Any]]:
    """One row per (test-time flips, head): pooled held-out AUCs, ECE and the fold mean."""
    rows = []
    for tta, evidence in evidence_by_tta.items():
        for head, fit in HEADS.items():
            probs = held_out_predictions(evidence, labels, folds, fit)
            per_fold = [(metrics.auc_abnormal(labels[t], probs[t]),
                         metrics.auc_malignant(labels[t], probs[t])) for _, t in folds]
            rows.append({"flips": tta, "head": head,
                         "auc_abnormal": metrics.auc_abnormal(labels, probs),
                         "auc_malignant": metrics.auc_malignant(labels, probs),
                         "ece": metrics.expected_calibration_error(labels, probs),
                         "fold_mean": [_mean([a for a, _ in per_fold]),
                                       _mean([m for _, m in per_fold])]})
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
