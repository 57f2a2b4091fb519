"""Each breast alone, or read against the other breast: held-out AUCs per patient split.

    python -m tests.benchmarks.bilateral_splits [--model default]
        [--data ../shared/data/mini-mias] [--seeds 20261325,20261425] [--save DIR]
        [--load DIR] [--json]

For the model's own split it reads the held-out predictions its training left
(``validation_predictions.json``); for every other seed it re-runs the model's recipe
exactly as ``mammo models repeat-cv`` does (own folds, own trunk seeds; about 15 minutes
per seed on 2 CPU cores) and keeps its held-out probabilities (``--save DIR`` writes them
as ``held_out_<seed>.json``; ``--load DIR`` reads them back instead of training). Then, on
each split's own patient folds, a bilateral head fitted on the other folds
(``models.bilateral.held_out_bilateral``) reads abnormal, malignant or both scores against
the other breast. It prints pooled held-out AUCs and the gain over the single image per
split, and the mean gain; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.bilateral import held_out_bilateral, pair_keys, partners
from models.bilateral_version import PREDICTIONS_FILE, held_out_probabilities
from models.datasets import LabelledImage, load_dataset
from models.prepared import prepare
from models.registry import resolve_model
from models.repeated_splits import recipe
from models.splits import patient_folds
from models.train_run import TrainConfig, cross_validate
from models.training import seen_by_trunks
from shared.enums import CLASSES

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mini-mias"
READINGS: dict[str, tuple[str, ...]] = {
    "alone": (), "abnormal": ("abnormal",), "malignant": ("malignant",),
    "both": ("abnormal", "malignant")}


def _rows_to_probs(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return dict(zip((r["id"] for r in rows), held_out_probabilities(rows), strict=True))


def _held_out(config: TrainConfig, images: list[LabelledImage], seed: int,
              save: Path | None, load: Path | None) -> dict[str, np.ndarray]:
    name = f"held_out_{seed}.json"
    if load is not None:
        return _rows_to_probs(json.loads((load / name).read_text(encoding="utf-8")))
    data = prepare(images, config.input_size, max_pixels=config.max_pixels)
    split = dataclasses.replace(config, seed=seed)
    folds = patient_folds(data.labels, data.patients, n_folds=split.folds, seed=seed)
    cv = cross_validate(seen_by_trunks(data, config.local_contrast_sigma), split, folds,
                        lambda _: None)
    rows = [{"id": i.id, **{f"p_{c.value}": float(v) for c, v in zip(CLASSES, p, strict=True)}}
            for i, p in zip(data.images, cv.probabilities, strict=True)]
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / name).write_text(json.dumps(rows), encoding="utf-8")
    return _rows_to_probs(rows)


def split_row(images: list[LabelledImage], probs: np.ndarray, folds: int,
              seed: int) -> dict[str, Any]:
    """AUCs of every reading on one split; the folds are the split's own (``seed``)."""
    labels = np.array([i.class_index for i in images], dtype=np.int64)
    patients = np.array([i.patient_id for i in images])
    splits = patient_folds(labels, patients, n_folds=folds, seed=seed)
    partner = partners(pair_keys(images))
    row: dict[str, Any] = {"seed": seed}
    for name, scores in READINGS.items():
        read = held_out_bilateral(probs, labels, partner, splits, scores) if scores else probs
        row[name] = [metrics.auc_abnormal(labels, read), metrics.auc_malignant(labels, read)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--seeds", default="20261325,20261425,20261525")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--load", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    spec = resolve_model(args.model)
    config = recipe(spec.metadata)
    by_id = {i.id: i for i in load_dataset(args.data)}
    own_rows = json.loads((spec.directory / PREDICTIONS_FILE).read_text(encoding="utf-8"))
    images = [by_id[r["id"]] for r in own_rows]
    splits = {config.seed: _rows_to_probs(own_rows)}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        splits[seed] = _held_out(config, images, seed, args.save, args.load)
    rows = [split_row(images, np.array([probs[i.id] for i in images]), config.folds, seed)
            for seed, probs in splits.items()]
    gains = {name: np.mean([[r[name][k] - r["alone"][k] for k in (0, 1)] for r in rows],
                           axis=0).tolist() for name in READINGS if name != "alone"}
    if args.json:
        print(json.dumps({"rows": rows, "mean_gain": gains}, indent=2))
        return
    print("AUC abnormal / malignant, held out, per patient split (" + spec.name + " "
          + spec.version + " recipe)")
    print(f"{'seed':>9} " + " ".join(f"{name:>15}" for name in READINGS))
    for row in rows:
        print(f"{row['seed']:>9} " + " ".join(
            f"{row[n][0]:>7.3f}/{row[n][1]:<7.3f}" for n in READINGS))
    print("mean gain over each image alone: " + ", ".join(
        f"{name} {g[0]:+.3f} / {g[1]:+.3f}" for name, g in gains.items()))


if __name__ == "__main__":
    main()
