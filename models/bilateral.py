"""Reading a breast against the same patient's other breast.

A radiologist reads the left and right breast side by side: a lesion is usually seen in one
breast only, while density, texture and exposure are shared by both. The CNN's score for one
breast mixes the two: in 1.2.0's held-out predictions the abnormality logits of a patient's
two breasts correlate at 0.54, although only 10 of 92 abnormal images have an abnormal
partner. ``BilateralHead`` reads each score against the partner's (same view, other side):

    P(abnormal) = sigmoid(a * logit(q_own) + b * logit(q_partner) + c)

and the same for P(malignant), with (a, b, c) fitted by logistic regression on held-out
predictions (patients the trunks never trained on), like the single-image Platt heads. An
image whose partner is absent keeps its single-image probabilities. ``MODEL-NOTES.md``
found the same direction with hand-made features (+0.05 AUC); the training run measures it
on the CNN (``mammo train``, model card).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    # Types only: models.datasets loads the image readers (pydicom, OpenCV), which the
    # exam queries behind `mammo status` and `mammo worklist` never use.
    from models.ablation import Folds
    from models.datasets import LabelledImage

# (who, laterality "L"/"R" or None, view or None): "who" is a patient in training data, a
# study read by one model version in the pipeline.
PairKey = tuple[object, str | None, str | None]
SCORES = ("abnormal", "malignant")
_EPS = 1e-4


@dataclass(frozen=True)
class PairedScore:
    """sigmoid(own * logit(q) + partner * logit(q_partner) + bias)."""

    own: float
    partner: float
    bias: float

    def apply(self, q: np.ndarray, q_partner: np.ndarray) -> np.ndarray:
        z = self.own * _logit(q) + self.partner * _logit(q_partner) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-z)))


@dataclass(frozen=True)
class BilateralHead:
    """A paired score for P(abnormal) and/or P(malignant); a score without one (None) keeps
    the single-image value."""

    abnormal: PairedScore | None
    malignant: PairedScore | None

    def apply(self, probs: np.ndarray, partner_probs: np.ndarray) -> np.ndarray:
        """(n, 3) normal/benign/malignant of images whose partner has ``partner_probs``.

        Recombined as ``models.layers.RankedProbabilities`` does: P(malignant) never
        exceeds P(abnormal)."""
        probs, partner_probs = np.atleast_2d(probs), np.atleast_2d(partner_probs)
        q_a = 1.0 - probs[:, 0]
        if self.abnormal is not None:
            q_a = self.abnormal.apply(q_a, 1.0 - partner_probs[:, 0])
        q_m = probs[:, 2]
        if self.malignant is not None:
            q_m = self.malignant.apply(q_m, partner_probs[:, 2])
        p_m = np.minimum(q_m, q_a)
        return np.stack([1.0 - q_a, q_a - p_m, p_m], axis=-1)

    @property
    def scores(self) -> tuple[str, ...]:
        return tuple(s for s in SCORES if getattr(self, s) is not None)

    def to_config(self) -> dict[str, dict[str, float] | None]:
        return {s: None if (f := getattr(self, s)) is None else dict(f.__dict__)
                for s in SCORES}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BilateralHead:
        return cls(*(None if config.get(s) is None else PairedScore(**config[s])
                     for s in SCORES))


def bilateral_head(metadata: Mapping[str, Any]) -> BilateralHead | None:
    """The model's bilateral head (metadata ``bilateral.head``), or None if it has none."""
    record = metadata.get("bilateral")
    return None if not record else BilateralHead.from_config(record["head"])


def _logit(q: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(q, np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q / (1.0 - q)))


def partners(keys: Sequence[PairKey]) -> np.ndarray:
    """Index of each image's partner (same who and view, other side), or -1.

    Only an unambiguous pair counts: one image per side of the view. Two left MLOs (a
    repeat exposure) or an unknown laterality leave the image without a partner rather
    than guess."""
    by_view: dict[tuple[object, str | None], dict[str, list[int]]] = {}
    for index, (who, laterality, view) in enumerate(keys):
        if laterality not in ("L", "R"):
            continue
        sides = by_view.setdefault((who, view), {})
        sides.setdefault(laterality, []).append(index)
    result = np.full(len(keys), -1, dtype=np.int64)
    for sides in by_view.values():
        if len(sides) == 2 and all(len(v) == 1 for v in sides.values()):
            (a,), (b,) = sides.values()
            result[a], result[b] = b, a
    return result


def pair_keys(images: Sequence[LabelledImage]) -> list[PairKey]:
    """Training images pair by patient and view."""
    return [(i.patient_id, i.laterality.value if i.laterality else None, i.view)
            for i in images]


def fit_bilateral(probs: np.ndarray, labels: np.ndarray, partner: np.ndarray,
                  scores: Sequence[str] = SCORES) -> BilateralHead:
    """Fit the paired ``scores`` on the images that have a partner (held-out
    probabilities); the others stay single-image."""
    unknown = set(scores) - set(SCORES)
    if unknown:
        raise ValueError(f"unknown bilateral score(s) {sorted(unknown)}; known: {SCORES}")
    paired = partner >= 0
    if not paired.any():
        raise ValueError("no image has a partner: a bilateral head needs patient pairs")
    own, other = probs[paired], probs[partner[paired]]
    truth = labels[paired]
    abnormal = _fit(1.0 - own[:, 0], 1.0 - other[:, 0], truth > 0)
    malignant = _fit(own[:, 2], other[:, 2], truth == 2)
    return BilateralHead(abnormal if "abnormal" in scores else None,
                         malignant if "malignant" in scores else None)


def _fit(q: np.ndarray, q_partner: np.ndarray, positive: np.ndarray) -> PairedScore:
    from sklearn.linear_model import LogisticRegression

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        rate = float(np.clip(positive.mean(), 1e-3, 1 - 1e-3))
        return PairedScore(0.0, 0.0, float(np.log(rate / (1 - rate))))
    x = np.column_stack([_logit(q), _logit(q_partner)])
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, positive)
    own, partner = (float(v) for v in model.coef_[0])
    # A breast's own evidence never lowers its probability (as in the single-image head).
    return PairedScore(max(own, 0.0), partner, float(model.intercept_[0]))


def apply_partners(probs: np.ndarray, partner: np.ndarray, head: BilateralHead) -> np.ndarray:
    """Bilateral probabilities where a partner exists; the single-image ones elsewhere."""
    out = np.array(probs, dtype=np.float64, copy=True)
    paired = partner >= 0
    if paired.any():
        out[paired] = head.apply(probs[paired], probs[partner[paired]])
    return out


def held_out_bilateral(probs: np.ndarray, labels: np.ndarray, partner: np.ndarray,
                       folds: Folds, scores: Sequence[str] = SCORES) -> np.ndarray:
    """Each fold's bilateral probabilities from a head fitted on the other folds.

    Patient folds keep both breasts of a patient on one side, so a held-out image and its
    partner are both held out."""
    out = np.array(probs, dtype=np.float64, copy=True)
    for train, test in folds:
        fit_partner = _within(partner, train)
        if not (fit_partner >= 0).any():
            continue  # no pair among the other folds: these images stay single-image
        head = fit_bilateral(probs, labels, fit_partner, scores)
        out[test] = apply_partners(probs, _within(partner, test), head)[test]
    return out


def _within(partner: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``partner`` restricted to pairs whose two images both lie in ``rows``."""
    inside = np.zeros(len(partner), bool)
    inside[rows] = True
    kept = inside & (partner >= 0)
    kept[kept] &= inside[partner[kept]]
    return np.where(kept, partner, -1)
