"""Image-level metrics of the evaluate contract, and bootstrap intervals over patients.

Conventions (PRODUCT.md): abnormal-vs-normal is scored by P(benign) + P(malignant);
malignant-vs-rest by P(malignant); sensitivity at 90% specificity is abnormal-vs-normal;
ECE is the top-label expected calibration error over 10 equal-width confidence bins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

ECE_BINS = 10


def auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None  # undefined with one class only
    return float(roc_auc_score(positive, score))


def auc_abnormal(truth: np.ndarray, probs: np.ndarray) -> float | None:
    return auc(truth > 0, probs[:, 1] + probs[:, 2])


def auc_malignant(truth: np.ndarray, probs: np.ndarray) -> float | None:
    return auc(truth == 2, probs[:, 2])


def sensitivity_at_specificity(truth: np.ndarray, probs: np.ndarray,
                               specificity: float = 0.9) -> float | None:
    from sklearn.metrics import roc_curve

    positive = truth > 0
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, probs[:, 1] + probs[:, 2])
    allowed = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[allowed].max())


def expected_calibration_error(truth: np.ndarray, probs: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; the first bin also holds 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def format_metric(value: float | None) -> str:
    """Three decimals, or "n/a" where a metric is undefined (one class only)."""
    return "n/a" if value is None else f"{value:.3f}"


def confusion(truth: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, probs.argmax(axis=1), labels=[0, 1, 2]).tolist()


def summary(truth: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The metric keys of ``mammo evaluate --format json`` (without model and predictions)."""
    truth = np.asarray(truth, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return {
        "n": int(truth.size),
        "accuracy": float((probs.argmax(axis=1) == truth).mean()) if truth.size else None,
        "confusion_matrix": confusion(truth, probs),
        "auc_abnormal": auc_abnormal(truth, probs),
        "auc_malignant": auc_malignant(truth, probs),
        "sensitivity_at_90_specificity": sensitivity_at_specificity(truth, probs),
        "ece": expected_calibration_error(truth, probs),
    }


Metric = Callable[[np.ndarray, np.ndarray], float | None]
INTERVAL_METRICS: dict[str, Metric] = {
    "auc_abnormal": auc_abnormal,
    "auc_malignant": auc_malignant,
    "sensitivity_at_90_specificity": sensitivity_at_specificity,
    "ece": expected_calibration_error,
    "accuracy": lambda t, p: float((p.argmax(axis=1) == t).mean()),
}


def bootstrap_intervals(truth: np.ndarray, probs: np.ndarray, patients: np.ndarray, *,
                        rounds: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals, resampling PATIENTS (both breasts together), not images."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(patients == p) for p in np.unique(patients)]
    draws: dict[str, list[float]] = {k: [] for k in INTERVAL_METRICS}
    for _ in range(rounds):
        pick = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        for name, metric in INTERVAL_METRICS.items():
            value = metric(truth[pick], probs[pick])
            if value is not None:
                draws[name].append(value)
    tail = (1.0 - level) / 2 * 100
    return {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            if len(v) >= rounds // 2 else None for k, v in draws.items()}
