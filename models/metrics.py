"""Image-level metrics of the evaluate contract, and bootstrap intervals over patients.

Conventions (PRODUCT.md): abnormal-vs-normal is scored by P(benign) + P(malignant);
malignant-vs-rest by P(malignant); sensitivity at 90% specificity is abnormal-vs-normal;
ECE is the top-label expected calibration error over 10 equal-width confidence bins.
Accuracy and the confusion matrix count the label the product stores and shows
(``shared.scoring.label_indices``: normal only at P(normal) >= 0.5), not the top class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shared.scoring import label_indices

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


def top_label(truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's top-class probability and whether that class is the truth: the pair
    top-label calibration (ECE, the reliability diagram) compares.

    Deliberately not the product's label (``label_indices``). Calibration asks whether a
    probability the model states comes true that often, so the probability and the class
    it is right or wrong about must be the same one. With (0.40, 0.35, 0.25) the label is
    benign but 0.40 is P(normal): pairing them would measure neither the probabilities nor
    the label. This is the standard definition, which keeps ECE comparable with the ECEs
    recorded in earlier models' metadata and with its target (<= 0.10)."""
    return probs.max(axis=1), probs.argmax(axis=1) == truth


def confidence_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin i of ``bins`` equal-width bins holds confidences in (i/bins, (i+1)/bins]; the
    first also holds 0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)


def expected_calibration_error(truth: np.ndarray, probs: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    confidence, hit = top_label(truth, probs)
    correct = hit.astype(np.float64)
    index = confidence_bins(confidence, bins)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def format_metric(value: float | None) -> str:
    """Three decimals, or "n/a" where a metric is undefined (one class only)."""
    return "n/a" if value is None else f"{value:.3f}"


def accuracy(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """The share of images whose label (``label_indices``) is the truth; None without any."""
    return float((label_indices(probs) == truth).mean()) if truth.size else None


def confusion(truth: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    """Rows truth, columns the label (``label_indices``), both normal/benign/malignant."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, label_indices(probs), labels=[0, 1, 2]).tolist()


def summary(truth: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The metric keys of ``mammo evaluate --format json`` (without model and predictions)."""
    truth = np.asarray(truth, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return {
        "n": int(truth.size),
        "accuracy": accuracy(truth, probs),
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
    "accuracy": accuracy,
}


def bootstrap_intervals(truth: np.ndarray, probs: np.ndarray, patients: np.ndarray, *,
                        rounds: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals, resampling PATIENTS (both breasts together), not images; ECE's
    is corrected for its resampling bias (see ``BIASED_UNDER_RESAMPLING``)."""
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
    estimates = {"ece": expected_calibration_error(truth, probs)} if len(truth) else {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for name, values in draws.items():
        if len(values) < rounds // 2:
            intervals[name] = None
            continue
        low, high = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
        if name in BIASED_UNDER_RESAMPLING and name in estimates:
            low, high = _bias_corrected(estimates[name], values, low, high)
        intervals[name] = (low, high)
    return intervals


# Binned ECE is biased upward on a bootstrap resample: duplicated images and fewer images per
# bin add sampling noise to every bin's |accuracy - confidence|, and noise only adds to an
# absolute value. The resampled ECEs therefore sit above the estimate, and the percentile
# interval can miss it altogether (0.047 with an interval 0.05-0.22). The basic (reverse-
# percentile) interval, 2*estimate minus the percentiles, does not mend that: it misses the
# estimate on the other side whenever the shift exceeds the resamples' lower spread (the same
# case gives 0.00-0.044). So for these metrics the percentile interval is corrected for the
# bootstrap's own bias, estimated as the median resample minus the estimate (Efron and
# Tibshirani 1993, ch. 10): the resamples' spread around their median, placed around the
# estimate. It contains the estimate by construction; ECE cannot go below 0. The AUCs,
# sensitivity and accuracy are not biased this way and keep the plain percentile interval.
BIASED_UNDER_RESAMPLING = frozenset({"ece"})


def _bias_corrected(estimate: float, values: list[float], low: float,
                    high: float) -> tuple[float, float]:
    bias = float(np.median(values)) - estimate
    return max(0.0, low - bias), high - bias
