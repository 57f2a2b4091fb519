"""Patient-level splits: a patient's two breasts never fall on both sides."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.datasets import DICOM_PATIENT, LabelledImage
from shared.enums import CLASSES
from shared.errors import DatasetError

# The part of a fold's training images kept apart (by patient) for early stopping.
EARLY_STOPPING_FRACTION = 0.15
# Patients each class needs: one held out, at least one in that fold's training part, so
# every fold's trunk learns every class.
MIN_PATIENTS_PER_CLASS = 2


def require_every_class(labels: np.ndarray, patients: np.ndarray, n_folds: int) -> str | None:
    """Raise ``DatasetError`` now, before any training, unless every class has images from
    ``MIN_PATIENTS_PER_CLASS`` patients and there are at least ``n_folds`` patients; return a
    warning when a class has fewer patients than there are folds (some folds then hold none
    of it out)."""
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
    if n_folds > (n_patients := len(set(patients.tolist()))):
        # Each fold holds out at least one patient: more folds cannot run, and fewer
        # running than asked would be recorded as asked.
        raise DatasetError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} patients, and this "
            f"data has {n_patients} ({class_counts(labels, patients)}): give --folds "
            f"{n_patients} or fewer, or add patients.")
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


def inner_split_need(labels: np.ndarray, patients: np.ndarray, *,
                     fraction: float = EARLY_STOPPING_FRACTION) -> int | None:
    """The images of one class a training part (``labels``, ``patients``) needs for its
    early-stopping split, when it has fewer; None when it can be split.

    The split is ``patient_folds`` into as many parts as the part has patients, at most
    ``inner_parts(fraction)`` and at least 2, and sklearn's stratified split refuses only
    when every class has fewer images than there are parts (or there are fewer patients
    than parts): so ONE class with that many images suffices.
    """
    n_patients = len(set(patients.tolist()))
    parts = max(2, min(inner_parts(fraction), n_patients))
    largest = int(np.bincount(labels).max()) if len(labels) else 0
    return None if n_patients >= parts and largest >= parts else parts


def require_inner_splits(labels: np.ndarray, patients: np.ndarray,
                         folds: list[tuple[np.ndarray, np.ndarray]], *,
                         fraction: float = EARLY_STOPPING_FRACTION) -> None:
    """Raise ``DatasetError`` now, before any training, if some fold's training part cannot
    be split again for early stopping (it would fail only when that fold's turn came).

    Whether a split is possible depends on the class counts, not on the seed, so one rule
    (``inner_split_need``) stands for every member's seed.
    """
    for k, (train, _held_out) in enumerate(folds, start=1):
        need = inner_split_need(labels[train], patients[train], fraction=fraction)
        if need is None:
            continue
        most, folds_n = inner_parts(fraction), len(folds)
        patients_too = " from 2 patients" if len(set(patients[train].tolist())) < 2 else ""
        raise DatasetError(
            f"Too few labelled images for {folds_n}-fold cross-validation with early "
            f"stopping: found {class_counts(labels, patients)}. Early stopping splits each "
            "fold's training images again by patient, one part per patient (at least 2, at "
            f"most {most}), and needs one class with as many images as parts: fold {k} trains "
            f"on {class_counts(labels[train], patients[train])}, so it needs {need} images of "
            f"one class{patients_too}. Add images to one class: {most} of it in each fold's "
            f"training part always suffice, which takes about "
            f"{math.ceil(most * folds_n / (folds_n - 1))} images of that one class in all with "
            f"{folds_n} folds.")


def class_counts(labels: np.ndarray, patients: np.ndarray) -> str:
    """'normal 3 images from 3 patients, benign ...' for messages."""
    parts = []
    for index, label in enumerate(CLASSES):
        mask = labels == index
        parts.append(f"{label.value} {int(mask.sum())} images from "
                     f"{len(set(patients[mask].tolist()))} patients")
    return ", ".join(parts)


def folds_digest(images: Sequence[LabelledImage],
                 folds: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of the ids each fold holds out: the folds a model was validated on, recorded
    (``training_data.folds_sha256``) so that what draws them again (``mammo models merge``, a
    bilateral head) can tell that it drew the same."""
    digest = hashlib.sha256()
    for _, held_out in folds:
        digest.update(("\t".join(sorted(images[int(i)].id for i in held_out)) + "\n").encode())
    return digest.hexdigest()


def require_recorded_folds(meta: Mapping[str, Any], images: Sequence[LabelledImage],
                           folds: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Raise ``DatasetError`` unless ``folds``, drawn again, are the folds the model of
    ``meta`` was validated on: else its trunks would be scored on images they trained on.
    A model that recorded none (trained before they were recorded) drew the same folds
    unless its patients came from DICOM headers (grouped then by a key drawn afresh in each
    process) or its data held copies of an image (not grouped then)."""
    name = f"{meta.get('name', 'the model')} {meta.get('version', '')}".strip()
    recorded = (meta.get("training_data") or {}).get("folds_sha256")
    if recorded is not None:
        if recorded == folds_digest(images, folds):
            return
        why = "its recorded folds are not the ones drawn now"
    elif any(image.patient_id.startswith(DICOM_PATIENT) or image.copy_of for image in images):
        why = ("it records no folds (an earlier version trained it), and this data's "
               "patients come from DICOM headers or it holds copies of an image, which that "
               "version split otherwise")
    else:
        return
    raise DatasetError(
        f"{name} cannot be scored on the folds drawn again from this data: {why}, so its "
        "trunks would be scored on images they trained on. Train it again with this version "
        "(same --seed) and use that model.")
