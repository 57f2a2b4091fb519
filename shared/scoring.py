"""Turn class probabilities into the label and the 1-10 suspicion score shown to readers."""

from __future__ import annotations

from shared.enums import CLASSES, Label


def label_of(p_normal: float, p_benign: float, p_malignant: float) -> Label:
    probs = (p_normal, p_benign, p_malignant)
    return CLASSES[max(range(3), key=probs.__getitem__)]


def suspicion(p_benign: float, p_malignant: float) -> int:
    """1 (nothing suspicious) .. 10 (most suspicious).

    A benign finding still warrants a look, so it counts half: the score is
    ``1 + floor(9.999 * (p_malignant + p_benign / 2))``, monotone in both probabilities.
    """
    raw = min(max(p_malignant + 0.5 * p_benign, 0.0), 1.0)
    return 1 + int(9.999 * raw)
