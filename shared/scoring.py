"""Turn class probabilities into the label and the 1-10 suspicion score shown to readers."""

from __future__ import annotations

from shared.enums import Label

# A view reads "normal" only while the model holds it more likely normal than not: the
# model's heads read out P(abnormal) and P(malignant), and P(normal) = 1 - P(abnormal).
NORMAL_AT_LEAST = 0.5


def label_of(p_normal: float, p_benign: float, p_malignant: float) -> Label:
    """"normal" only when P(normal) >= 0.5, i.e. P(abnormal) <= 0.5; otherwise the more
    probable of benign and malignant (a tie reads malignant, the graver).

    Not the top of the three classes: (0.37, 0.33, 0.30) is abnormal with probability
    0.63, and a "normal" label on it reads like a clearance in the worklist and the report.
    """
    if p_normal >= NORMAL_AT_LEAST:
        return Label.NORMAL
    return Label.BENIGN if p_benign > p_malignant else Label.MALIGNANT


def suspicion(p_benign: float, p_malignant: float) -> int:
    """1 (nothing suspicious) .. 10 (most suspicious).

    A benign finding still warrants a look, so it counts half: the score is
    ``1 + floor(9.999 * (p_malignant + p_benign / 2))``, monotone in both probabilities.
    """
    raw = min(max(p_malignant + 0.5 * p_benign, 0.0), 1.0)
    return 1 + int(9.999 * raw)
