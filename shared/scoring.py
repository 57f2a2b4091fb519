"""Turn class probabilities into the label and the 1-10 suspicion score shown to readers."""

from __future__ import annotations

import numpy as np

from shared.enums import CLASSES, Label

# A view reads "normal" only while the model holds it more likely normal than not: the
# model's heads read out P(abnormal) and P(malignant), and P(normal) = 1 - P(abnormal).
NORMAL_AT_LEAST = 0.5
# The rule in words, recorded beside figures computed with it (a model's validation metadata),
# so a card can tell them from figures of older models that counted the top of three classes.
LABEL_RULE = (f"normal only at P(normal) >= {NORMAL_AT_LEAST}, else the more probable of "
              "benign and malignant (a tie malignant)")


def label_indices(probs: np.ndarray) -> np.ndarray:
    """The label of each row of (n, 3) normal/benign/malignant probabilities, as indices
    into ``CLASSES``: the one rule behind the stored labels and the evaluation figures.

    "normal" only when P(normal) >= 0.5, i.e. P(abnormal) <= 0.5; otherwise the more
    probable of benign and malignant (a tie reads malignant, the graver). Not the top of
    the three classes (argmax): (0.37, 0.33, 0.30) is abnormal with probability 0.63, and a
    "normal" label on it reads like a clearance in the worklist and the report.
    """
    probs = np.asarray(probs)
    abnormal = np.where(probs[:, 1] > probs[:, 2], 1, 2)
    return np.where(probs[:, 0] >= NORMAL_AT_LEAST, 0, abnormal).astype(np.int64)


def label_of(p_normal: float, p_benign: float, p_malignant: float) -> Label:
    """The label of one view's probabilities (``label_indices``, which states the rule)."""
    row = np.array([[p_normal, p_benign, p_malignant]], dtype=np.float64)
    return CLASSES[int(label_indices(row)[0])]


def suspicion(p_benign: float, p_malignant: float) -> int:
    """1 (nothing suspicious) .. 10 (most suspicious).

    A benign finding still warrants a look, so it counts half: the score is
    ``1 + floor(9.999 * (p_malignant + p_benign / 2))``, monotone in both probabilities.
    """
    raw = min(max(p_malignant + 0.5 * p_benign, 0.0), 1.0)
    return 1 + int(9.999 * raw)
