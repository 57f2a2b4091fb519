"""Patient-level splits: a patient's two breasts never fall on both sides."""

from __future__ import annotations

import math
import warnings

import numpy as np

from shared.enums import CLASSES
from shared.errors import DatasetError

# The part of a fold's training images kept apart (by patient) for early stopping.
EARLY_STOPPING_FRACTION = 0.15
# Patients each class needs: one held out, at least one in that fold's training part, so
# every fold's trunk learns every class.
MIN_PATIENTS_PER_CLASS = 2


def require_every_class(labels: np.ndarray, patients: np.ndarray, n_folds: int) -> str | None:
    """Raise ``DatasetError`` now, before any training, unless every class has images from
    ``MIN_PATIENTS_PER_CLASS`` patients; return a warning when a class has fewer patients
    than there are folds (some folds then hold none of it out)."""
    found = {label.value: len(set(patients[labels == i].tolist()))
             for i, label in enumerate(CLASSES)}
    short = [name for name, n in found.items() if n < MIN_PATIENTS_PER_CLASS]
    if short:
        raise DatasetError(
            f"Cannot train on {class_counts(labels, patients)}: each of "
            f"{', '.join(found)} needs images from at least {MIN_PATIENTS_PER_CLASS} patients, "
            "so that every cross-validation fold trains on it and holds some out (a class "
            "missing from training gives a head that never learnt it). Add "
            f"{' and '.join(short)} images.")
    few = [f"{name} ({n})" for name, n in found.items() if n < n_folds]
    if not few:
        return None
    return (f"fewer patients than the {n_folds} folds in {', '.join(few)}: some folds hold "
            "none of them out, and the validation figures for them rest on few patients")


def patient_folds(labels: np.ndarray, patients: np.ndarray, *, n_folds: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs, stratified on the label, grouped by patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(patients.tolist()))
    folds = max(2, min(n_folds, n_groups))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Small sets have classes rarer than the number of folds: stratification is then
        # best effort, which is all sklearn's warning says.
        warnings.filterwarnings("ignore", message="The least populated class",
                                category=UserWarning)
        try:
            return [(np.asarray(a), np.asarray(b))
                    for a, b in splitter.split(np.zeros(len(labels)), labels, patients)]
        except ValueError as exc:
            # sklearn refuses when every class has fewer images than there are folds.
            if "n_splits" not in str(exc):
                raise
            raise DatasetError(
                f"Too few labelled images to split by patient into {folds} folds: found "
                f"{class_counts(labels, patients)}; at least one class needs {folds} images "
                "(add images or give fewer --folds).") from None


def inner_validation(labels: np.ndarray, patients: np.ndarray, *, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set again, for early stopping that never sees the held-out fold."""
    folds = patient_folds(labels, patients, n_folds=inner_parts(fraction), seed=seed)
    return folds[0]


def inner_parts(fraction: float) -> int:
    return max(2, round(1 / fraction))


def require_inner_splits(labels: np.ndarray, patients: np.ndarray,
                         folds: list[tuple[np.ndarray, np.ndarray]], *,
                         fraction: float = EARLY_STOPPING_FRACTION) -> None:
    """Raise ``DatasetError`` now, before any training, if some fold's training part cannot
    be split again for early stopping (it would fail only when that fold's turn came).

    Whether a split is possible depends on the class counts, not on the seed, so one try
    per fold stands for every member's seed.
    """
    for train, _held_out in folds:
        try:
            inner_validation(labels[train], patients[train], fraction=fraction, seed=0)
        except DatasetError:
            parts = inner_parts(fraction)
            # Balanced classes: each needs `parts` images in a training part of
            # (k - 1) / k of the data.
            need = math.ceil(parts * len(folds) / (len(folds) - 1))
            raise DatasetError(
                f"Too few labelled images for {len(folds)}-fold cross-validation with early "
                f"stopping: found {class_counts(labels, patients)}. Each fold's training "
                f"images are split again by patient into {parts} parts, which needs about "
                f"{need} images, from as many patients, per class.") from None


def class_counts(labels: np.ndarray, patients: np.ndarray) -> str:
    """'normal 3 images from 3 patients, benign ...' for messages."""
    parts = []
    for index, label in enumerate(CLASSES):
        mask = labels == index
        parts.append(f"{label.value} {int(mask.sum())} images from "
                     f"{len(set(patients[mask].tolist()))} patients")
    return ", ".join(parts)
