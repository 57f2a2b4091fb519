"""Whole-image fine-tuning, measured on a trained model's own trunks and folds.

    python -m tests.benchmarks.whole_image_finetune [--model models/default/1.2.0]
        [--data ../shared/data/mini-mias] [--epochs 8] [--learning-rate 1e-4] [--json]

Trunk k of a `mammo train` model learnt on every fold but k. Each is scored on its
held-out fold as it is, then fine-tuned on its own training part's whole images
(``models.finetune``, what ``mammo train --finetune-epochs`` does) and scored again. Same
trunks, same folds: the patch-training noise (a few hundredths of AUC between seeds)
cancels, and only the fine-tuning differs. Prints pooled held-out AUCs (the shipped head
fitted on the other folds), ECE and the heatmap localisation rate; nothing is asserted.
About 6 minutes on 2 CPU cores for 8 epochs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.ablation import held_out_predictions, shipped_head
from models.datasets import load_dataset
from models.finetune import FinetuneOptions, finetune_on_images
from models.heatmaps import localisation_rate
from models.prepared import PreparedSet, prepare
from models.registry import resolve_model
from models.repeated_splits import recipe
from models.splits import patient_folds
from models.train_run import data_hash, held_out_evidence
from models.training import seen_by_trunks

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data" / "mini-mias"
FINETUNE_EPOCHS = 8  # what model 1.4.0 was fine-tuned with


def held_out(trunks: list[Any], data: PreparedSet, folds: list[tuple[np.ndarray, np.ndarray]],
             patch: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each image's single-image probabilities and heatmap from the trunk that never saw it
    (trunk k scores fold k), through the shipped head fitted on the other folds."""
    n = len(data.images)
    evidence, heatmaps = np.zeros((n, 9)), [np.zeros(0)] * n
    for trunk, fold in zip(trunks, folds, strict=True):
        standardised, _, maps = held_out_evidence(trunk, data, fold, patch, ((),))
        evidence[fold[1]] = standardised
        for i, heatmap in zip(fold[1], maps["heatmap"], strict=True):
            heatmaps[int(i)] = heatmap
    return held_out_predictions(evidence, data.labels, folds, shipped_head), heatmaps


def score(name: str, trunks: list[Any], data: PreparedSet,
           folds: list[tuple[np.ndarray, np.ndarray]], patch: int) -> dict[str, Any]:
    labels = data.labels
    probs, heatmaps = held_out(trunks, data, folds, patch)
    return {"trunks": name, "auc_abnormal": metrics.auc_abnormal(labels, probs),
            "auc_malignant": metrics.auc_malignant(labels, probs),
            "ece": metrics.expected_calibration_error(labels, probs),
            "localisation": localisation_rate(heatmaps, data.circles, patch)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "default" / "1.2.0"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS)
    parser.add_argument("--learning-rate", type=float, default=FinetuneOptions.learning_rate)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import keras

    import models.layers  # noqa: F401  (registers the custom layers)

    spec = resolve_model(args.model)
    config = recipe(spec.metadata)
    if config.members != 1:
        raise SystemExit("this benchmark pairs one trunk per fold; the model has "
                         f"{config.members}")
    if config.finetune_epochs:
        raise SystemExit(f"{spec.name} {spec.version} is already fine-tuned: give a model "
                         "trained with --finetune-epochs 0")
    images = load_dataset(args.data)
    if data_hash(images) != spec.metadata["training_data"]["sha256"]:
        raise SystemExit(f"{args.data} is not the data {spec.name} {spec.version} trained on")
    data = seen_by_trunks(prepare(images, config.input_size, max_pixels=config.max_pixels),
                          config.local_contrast_sigma)
    folds = patient_folds(data.labels, data.patients, n_folds=config.folds, seed=config.seed)
    model = keras.models.load_model(spec.model_path, compile=False, safe_mode=True)
    trunks = [model.get_layer(f"trunk_{k + 1}") for k in range(len(folds))]
    rows = [score(f"{spec.version} as trained", trunks, data, folds, config.patch)]
    started = time.perf_counter()
    options = FinetuneOptions(epochs=args.epochs, learning_rate=args.learning_rate)
    tuned = []
    for k, (trunk, (train, _)) in enumerate(zip(trunks, folds, strict=True)):
        copy = keras.models.clone_model(trunk)
        copy.set_weights(trunk.get_weights())
        finetune_on_images(copy, data.subset(train), options, patch=config.patch,
                           seed=config.seed + k, name=trunk.name,
                           progress=lambda m: print(m, flush=True))
        tuned.append(copy)
    minutes = (time.perf_counter() - started) / 60
    rows.append(score(f"fine-tuned {args.epochs} epochs, lr {args.learning_rate:g} "
                       f"({minutes:.1f} min)", tuned, data, folds, config.patch))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| trunks | AUC abnormal | AUC malignant | ECE | peak in circle |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trunks']} | {r['auc_abnormal']:.3f} | {r['auc_malignant']:.3f} | "
              f"{r['ece']:.3f} | {r['localisation']:.0%} |")


if __name__ == "__main__":
    main()
