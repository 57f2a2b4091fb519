"""The image-level head: multinomial logistic regression on the lesion evidence, then
temperature scaling, folded into one affine map so the Keras model stays a plain Dense layer.

The temperature is fitted on predictions the regression made for patients it did not see
(grouped cross-validation), so it corrects the over-confidence that held-out data shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.splits import patient_folds


@dataclass(frozen=True)
class Head:
    weights: np.ndarray  # (features, 3), temperature included
    bias: np.ndarray  # (3,)
    temperature: float

    def logits(self, evidence: np.ndarray) -> np.ndarray:
        return np.asarray(evidence, np.float64) @ self.weights + self.bias

    def probabilities(self, evidence: np.ndarray) -> np.ndarray:
        return softmax(self.logits(evidence))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _regression(evidence: np.ndarray, labels: np.ndarray,
                c: float) -> tuple[np.ndarray, np.ndarray]:
    """Standardised multinomial logistic regression, returned as raw-feature (W, b)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = evidence.mean(axis=0), evidence.std(axis=0) + 1e-6
    present = np.unique(labels)
    if present.size == 1:  # a tiny set with one class: predict it, nothing to regress
        bias = np.full(3, -30.0)
        bias[int(present[0])] = 0.0
        return np.zeros((evidence.shape[1], 3)), bias
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit((evidence - mean) / std, labels)
    coef = np.zeros((3, evidence.shape[1]))
    intercept = np.full(3, -30.0)  # a class absent from training gets ~zero probability
    for row, cls in enumerate(model.classes_):
        coef[int(cls)] = model.coef_[row] if len(model.classes_) > 2 else (
            model.coef_[0] * (1 if row else -1) / 2)
        intercept[int(cls)] = model.intercept_[row] if len(model.classes_) > 2 else (
            model.intercept_[0] * (1 if row else -1) / 2)
    weights = (coef / std).T
    bias = intercept - (coef * mean / std).sum(axis=1)
    return weights, bias


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def fit_head(evidence: np.ndarray, labels: np.ndarray, patients: np.ndarray, *,
             seed: int, c: float = 0.3) -> Head:
    held_out = np.zeros((len(labels), 3))
    for train, test in patient_folds(labels, patients, n_folds=5, seed=seed):
        w, b = _regression(evidence[train], labels[train], c)
        held_out[test] = evidence[test] @ w + b
    temperature = fit_temperature(held_out, labels)
    weights, bias = _regression(evidence, labels, c)
    return Head(weights / temperature, bias / temperature, temperature)
