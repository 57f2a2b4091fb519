"""The image-level head: two Platt-scaled scores read off the lesion evidence.

P(abnormal) and P(malignant) each come from one fixed read-out of the evidence (by default
the mean log-odds of the strongest locations) through a sigmoid whose slope and intercept
are fitted on held-out evidence (patients the trunks never trained on). Platt scaling is
monotone, so the heads keep the ranking of the max-evidence scores, which is what the AUCs
measure; the multinomial head it replaces (1.0.0) collapsed towards "normal" and ranked
worse than its own strongest input. ``models.layers.RankedProbabilities`` turns the two
scores into three class probabilities, in the model and here alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Evidence columns (models.layers.LesionEvidence): max, top-k mean, mean over all
# locations, each for benign, malignant, abnormal.
EVIDENCE_NAMES = ("max_benign", "max_malignant", "max_abnormal",
                  "topk_benign", "topk_malignant", "topk_abnormal",
                  "mean_benign", "mean_malignant", "mean_abnormal")
ABNORMAL_SCORE = "topk_abnormal"
MALIGNANT_SCORE = "topk_malignant"


@dataclass(frozen=True)
class Platt:
    weights: np.ndarray  # (features,): the read-out with the fitted slope folded in
    bias: float


@dataclass(frozen=True)
class RankingHead:
    abnormal: Platt
    malignant: Platt
    scores: tuple[str, str] = (ABNORMAL_SCORE, MALIGNANT_SCORE)

    def layer_config(self) -> dict[str, object]:
        return {"abnormal": self.abnormal.weights.tolist(), "abnormal_bias": self.abnormal.bias,
                "malignant": self.malignant.weights.tolist(),
                "malignant_bias": self.malignant.bias}

    def probabilities(self, evidence: np.ndarray) -> np.ndarray:
        from models.layers import RankedProbabilities

        layer = RankedProbabilities(**self.layer_config())  # type: ignore[arg-type]
        return np.asarray(layer(np.asarray(evidence, np.float32)), np.float64)

    def describe(self) -> dict[str, object]:
        return {"abnormal_score": self.scores[0], "malignant_score": self.scores[1],
                **self.layer_config()}


def readout(name: str) -> np.ndarray:
    vector = np.zeros(len(EVIDENCE_NAMES))
    vector[EVIDENCE_NAMES.index(name)] = 1.0
    return vector


def fit_platt(score: np.ndarray, positive: np.ndarray, direction: np.ndarray) -> Platt:
    """P(positive | score) = sigmoid(a * score + b), with ``score = evidence @ direction``.

    A class absent from ``positive`` (tiny sets) gives a constant at its prevalence.
    """
    from sklearn.linear_model import LogisticRegression

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        rate = float(np.clip(positive.mean(), 1e-3, 1 - 1e-3))
        return Platt(np.zeros_like(direction), float(np.log(rate / (1 - rate))))
    model = LogisticRegression(C=10.0, max_iter=1000)
    model.fit(np.asarray(score, np.float64).reshape(-1, 1), positive)
    slope = max(float(model.coef_[0, 0]), 0.0)  # more evidence never lowers the probability
    return Platt(direction * slope, float(model.intercept_[0]))


def fit_head(evidence: np.ndarray, labels: np.ndarray, *,
             scores: tuple[str, str] = (ABNORMAL_SCORE, MALIGNANT_SCORE)) -> RankingHead:
    """Fit both scores on (held-out) evidence with image labels 0/1/2."""
    abnormal, malignant = readout(scores[0]), readout(scores[1])
    return RankingHead(fit_platt(evidence @ abnormal, labels > 0, abnormal),
                       fit_platt(evidence @ malignant, labels == 2, malignant), scores)
