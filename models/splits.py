"""Patient-level splits: a patient's two breasts never fall on both sides."""

from __future__ import annotations

import warnings

import numpy as np


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
        return [(np.asarray(a), np.asarray(b))
                for a, b in splitter.split(np.zeros(len(labels)), labels, patients)]


def inner_validation(labels: np.ndarray, patients: np.ndarray, *, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set again, for early stopping that never sees the held-out fold."""
    folds = patient_folds(labels, patients, n_folds=max(2, round(1 / fraction)), seed=seed)
    return folds[0]
