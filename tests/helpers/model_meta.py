"""Model metadata as `mammo train` writes it, small enough to state in a test."""

from __future__ import annotations

import copy
from typing import Any


def model_meta(auc_abnormal: float = 0.60, auc_malignant: float = 0.70,
               seed: int = 7) -> dict[str, Any]:
    """What the reproducibility check reads: validation, localisation, ablation."""
    return {
        "name": "default", "version": "9.9.9", "sha256": "ab" * 32, "seed": seed,
        "training_data": {"sha256": "cd" * 32},
        "training": {"seconds": 600.0, "best_epochs": [3, 4]},
        "validation": {"auc_abnormal": auc_abnormal, "auc_malignant": auc_malignant,
                       "sensitivity_at_90_specificity": 0.2, "accuracy": 0.6, "ece": 0.05,
                       # half-widths 0.06 and 0.08: the yardstick is their mean, 0.07
                       "ci95": {"auc_abnormal": [0.54, 0.66],
                                "auc_malignant": [0.62, 0.78]}},
        "localisation": {"peak_inside_circle": 0.4, "images": 10},
        "ablation": [{"flips": "none", "head": "h", "auc_abnormal": auc_abnormal,
                      "auc_malignant": auc_malignant, "ece": 0.05, "fold_mean": [None, None]}],
    }


def card_meta() -> dict[str, Any]:
    """``model_meta`` plus everything the model card renders."""
    meta = {**model_meta(), "classes": ["normal", "benign", "malignant"],
            "input_size": [512, 512], "preprocessing_version": "2", "architecture": "a",
            "ensemble_members": 2, "patch": 64, "pixel_size_mm": 0.2, "tta_flips": [[]],
            "head": {}}
    meta["validation"].update(n=10, confusion_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    meta["baseline"] = copy.deepcopy(meta["validation"])
    meta["training_data"].update(images=10, patients=5, classes={"normal": 10})
    meta["training"].update(folds=2, bootstrap_rounds=20, machine="x86_64, 2 CPU cores")
    return meta
