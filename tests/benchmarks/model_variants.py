"""Training recipes side by side: `mammo train`'s own ("plain", 1.8.0's recipe: patch
training, then 8 epochs of whole-image fine-tuning with image and location labels), with
local contrast, fine-tuned with image labels only ("image-labels", 1.4.0's recipe), without
the fine-tuning ("scratch", 1.2.0's recipe), 1.5.0's recipe (20 epochs of contrastive
pretraining, no fine-tuning: "pretrained"), with the patch weights averaged from epoch 16
("averaged"), with 5 normal patches per lesion patch and 8 hard negatives mined per image
("negatives"), with two or three convolutions per pooled stage of the trunk ("deep",
"deeper"), with 7/6 times the trunk's channels ("wide"), with MixUp on the training patches
("mixup") or with focal loss in patch training ("focal"); one trunk per fold or a seed
ensemble.

    python -m tests.benchmarks.model_variants [--data ../shared/data/mini-mias]
        [--variants plain,scratch,pretrained] [--seeds 20261125,20261225]
        [--epochs 36] [--json]

Every variant is cross-validated on the SAME patient folds (those of the first seed), with
one trunk per fold for each seed; then each variant's seeds are averaged into a seed
ensemble, exactly as ``mammo train --members N`` averages a fold's trunks. It prints pooled
held-out AUCs, the mean of the per-fold AUCs and the localisation rate; nothing is
asserted. Slow: about 15 minutes per (variant, seed) on 2 CPU cores, 25 with
pretraining. Training run-to-run
noise on this data is a few hundredths of AUC, so read differences against it.
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
from models.architecture import LOCAL_CONTRAST_SIGMA
from models.datasets import load_dataset
from models.heatmaps import localisation_rate
from models.prepared import PreparedSet, prepare
from models.splits import patient_folds
from models.train_run import TrainConfig, cross_validate
from models.training import seen_by_trunks

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mini-mias"
# Each variant: what it changes in mammo train's default recipe.
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {}, "contrast": {"local_contrast_sigma": LOCAL_CONTRAST_SIGMA},
    "scratch": {"finetune_epochs": 0},
    "pretrained": {"pretrain_epochs": 20, "finetune_epochs": 0},
    "averaged": {"average_from": 16},
    "negatives": {"negatives_ratio": 5.0, "hard_negatives": 8},
    "image-labels": {"finetune_location_weight": 0.0}, "deep": {"stage_convs": 2},
    "deeper": {"stage_convs": 3},
    # 7/6 of WIDTHS: 1.36 times the weights and multiply-adds, the widest trunk whose five
    # folds stay under the 25 MB model budget (19.6 MB of float32 weights).
    "wide": {"widths": (28, 56, 112, 168, 224)},
    # MixUp on the training patches, alpha 0.2 (the paper's ImageNet setting).
    "mixup": {"mixup": 0.2},
    # Focal loss in patch training, gamma 2 (the paper's best setting).
    "focal": {"focal_gamma": 2.0}}
DEFAULTS = TrainConfig()


def _row(name: str, data: PreparedSet, folds: list[tuple[np.ndarray, np.ndarray]],
         evidence: np.ndarray, heatmaps: list[np.ndarray], seconds: float) -> dict[str, Any]:
    labels = data.labels
    probs = held_out_predictions(evidence, labels, folds, shipped_head)
    per_fold = [(metrics.auc_abnormal(labels[t], probs[t]),
                 metrics.auc_malignant(labels[t], probs[t])) for _, t in folds]
    rate, scored = localisation_rate(heatmaps, data.circles, DEFAULTS.patch)
    return {"variant": name, "auc_abnormal": metrics.auc_abnormal(labels, probs),
            "auc_malignant": metrics.auc_malignant(labels, probs),
            "fold_mean": [float(np.mean([a for a, _ in per_fold if a is not None])),
                          float(np.mean([m for _, m in per_fold if m is not None]))],
            "localisation": rate, "localisation_images": scored, "seconds": round(seconds)}


def run(data_path: Path, variants: list[str], seeds: list[int],
        epochs: int) -> list[dict[str, Any]]:
    data = prepare(load_dataset(data_path), DEFAULTS.input_size, max_pixels=DEFAULTS.max_pixels)
    folds = patient_folds(data.labels, data.patients, n_folds=DEFAULTS.folds, seed=seeds[0])
    rows = []
    for variant in variants:
        changes = VARIANTS[variant]
        seen = seen_by_trunks(data, changes.get("local_contrast_sigma"))
        evidences, maps, total = [], [], 0.0
        for seed in seeds:
            started = time.perf_counter()
            config = TrainConfig(seed=seed, members=1, epochs=epochs, **changes)
            cv = cross_validate(seen, config, folds, lambda _: None)
            seconds = time.perf_counter() - started
            total += seconds
            evidences.append(cv.evidence)
            maps.append(cv.heatmaps)
            rows.append(_row(f"{variant}, seed {seed}", data, folds, cv.evidence, cv.heatmaps,
                             seconds))
            print(json.dumps(rows[-1]), flush=True)
        if len(seeds) > 1:
            ensemble_maps = [np.mean(m, axis=0) for m in zip(*maps, strict=True)]
            rows.append(_row(f"{variant}, {len(seeds)}-seed ensemble", data, folds,
                             np.mean(evidences, axis=0), ensemble_maps, total))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--variants", default="plain,contrast")
    parser.add_argument("--seeds", default="20261125,20261225")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs,
                        help="maximum epochs per trunk (1 for a quick smoke run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"no labelled data at {args.data}: pass --data")
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    rows = run(args.data, variants, [int(s) for s in args.seeds.split(",")], args.epochs)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| variant | AUC abnormal | AUC malignant | fold-mean AUCs | peak in circle | min |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['auc_abnormal']:.3f} | {r['auc_malignant']:.3f} | "
              f"{r['fold_mean'][0]:.3f} / {r['fold_mean'][1]:.3f} | "
              f"{r['localisation']:.0%} of {r['localisation_images']} | {r['seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
