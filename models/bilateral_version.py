"""``mammo models bilateral``: a new version of an existing model that reads each breast
against the other, without retraining its trunks.

The bilateral head (``models.bilateral``) is fitted on held-out predictions only, and a
training run leaves exactly those behind (``validation_predictions.json``, one row per
image, in training order). So a model trained before the head existed can gain one: the
same patient folds are drawn again from the recorded seed, the head is validated fold by
fold (fitted on the other folds) and fitted on all held-out predictions for shipping. The
new version holds the same ``model.keras`` (same sha256); its metadata and card gain the
``bilateral`` record and say which version they derive from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import LabelledImage, load_dataset
from models.model_card import write_model_card
from models.registry import METADATA_FILE, ModelSpec, new_model_dir, sealed
from models.repeated_splits import recipe
from models.splits import patient_folds, require_recorded_folds
from models.train_run import bilateral_validation, data_hash, validation_report
from shared.enums import CLASSES
from shared.errors import ConfigurationError, DatasetError

Progress = Callable[[str], None]
PREDICTIONS_FILE = "validation_predictions.json"


def _held_out(spec: ModelSpec, data_path: Path) -> tuple[list[LabelledImage], np.ndarray]:
    """The model's training images, in training order, and their held-out probabilities."""
    path = spec.directory / PREDICTIONS_FILE
    if not path.is_file():
        raise DatasetError(f"{path} is missing: only a model written by `mammo train` (which "
                           "leaves its held-out predictions) can gain a bilateral head.")
    rows = json.loads(path.read_text(encoding="utf-8"))
    by_id = {image.id: image for image in load_dataset(data_path)}
    missing = [r["id"] for r in rows if r["id"] not in by_id]
    images = [by_id[r["id"]] for r in rows if r["id"] in by_id]
    recorded = spec.metadata["training_data"]["sha256"]
    if missing or data_hash(images) != recorded:
        raise DatasetError(
            f"{data_path} is not the data {spec.name} {spec.version} trained on "
            f"({len(missing)} of its {len(rows)} images missing, or other labels or files): "
            "the head must be fitted on the predictions of the images the model was "
            "validated on.")
    return images, held_out_probabilities(rows)


def held_out_probabilities(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(n, 3) normal/benign/malignant of ``validation_predictions.json``-style rows."""
    return np.array([[r[f"p_{c.value}"] for c in CLASSES] for r in rows], np.float64)


def derive(spec: ModelSpec, data_path: Path, output: Path, version: str,
           scores: Sequence[str], command: str, say: Progress) -> Path:
    """Write ``output/<name>/<version>``: ``spec``'s model with a bilateral head."""
    if spec.metadata.get("bilateral"):
        raise ConfigurationError(f"{spec.name} {spec.version} already reads breasts in pairs "
                                 "(its metadata has a bilateral head).")
    target = new_model_dir(output, spec.name, version)
    config = dataclasses.replace(recipe(spec.metadata), bilateral=tuple(scores))
    images, probs = _held_out(spec, data_path)
    labels = np.array([i.class_index for i in images], dtype=np.int64)
    patients = np.array([i.patient_id for i in images])
    folds = patient_folds(labels, patients, n_folds=config.folds, seed=config.seed)
    require_recorded_folds(spec.metadata, images, folds)
    found = bilateral_validation(images, probs, folds, config.bilateral)
    if found is None:
        raise DatasetError(f"{data_path} pairs no patient's two breasts (same view): there "
                           "is nothing to read side by side.")
    record, held_out = found
    record["validation"] = validation_report(labels, held_out, patients, config)
    say(f"{record['images_paired']} of {len(images)} images paired; held-out AUC abnormal "
        f"{record['validation']['auc_abnormal']:.3f}, malignant "
        f"{record['validation']['auc_malignant']:.3f} read with the other breast "
        f"(each image alone: {spec.metadata['validation']['auc_abnormal']:.3f}, "
        f"{spec.metadata['validation']['auc_malignant']:.3f})")
    shutil.copytree(spec.directory, target)
    meta: dict[str, Any] = {
        **spec.metadata, "version": version, "bilateral": record,
        "training": {**spec.metadata["training"], "bilateral": list(config.bilateral)},
        "derived_from": {"version": spec.version, "command": command,
                         "note": "same model.keras; bilateral head fitted on its held-out "
                                 "predictions"},
    }
    meta = sealed(meta)  # a new head, so a new seal
    (target / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_model_card(target, meta)
    return target
