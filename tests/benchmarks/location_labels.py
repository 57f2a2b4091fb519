"""Whole-image fine-tuning with and without location labels, on the same patch-trained trunks.

    python -m tests.benchmarks.location_labels [--data ../shared/data/mini-mias]
        [--seeds 20261125 20261525 20261625] [--weight 1.0] [--epochs 36]
        [--finetune-epochs 8] [--json]

For each seed (each its own patient split), every fold's trunk is patch-trained once with
``mammo train``'s recipe, then copied and fine-tuned on whole images twice: with image
labels only (1.4.0's recipe, ``--finetune-locations 0``) and with every map location's label
from the lesion circles as well (``--finetune-locations WEIGHT``, 1.7.0's). Both copies are
scored on the held-out fold, so the pair differs only in the fine-tuning loss. Prints pooled
held-out AUCs (the shipped head fitted on the other folds), ECE and the heatmap localisation
rate; nothing is asserted. About 20 minutes per seed on 2 CPU cores (both arms).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from models.datasets import load_dataset
from models.finetune import FinetuneOptions, finetune_on_images
from models.prepared import prepare
from models.splits import patient_folds
from models.train_run import TrainConfig, patch_trained
from tests.benchmarks.paired import print_paired
from tests.benchmarks.whole_image_finetune import SHARED_DATA, score


def compare(data_path: Path, config: TrainConfig, weight: float) -> list[dict[str, Any]]:
    """One row per arm (location weight 0, then ``weight``) for the split of ``config.seed``."""
    import keras

    data = prepare(load_dataset(data_path), config.input_size, max_pixels=config.max_pixels)
    folds = patient_folds(data.labels, data.patients, n_folds=config.folds, seed=config.seed)
    arms: dict[float, list[Any]] = {0.0: [], weight: []}
    started = time.perf_counter()
    for k, fold in enumerate(folds):
        trained = patch_trained(data, config, fold, config.seed + k, f"trunk_{k + 1}", _say)
        for location_weight, trunks in arms.items():
            trunk = keras.models.clone_model(trained.trunk)
            trunk.set_weights(trained.trunk.get_weights())
            finetune_on_images(trunk, data.subset(fold[0]), FinetuneOptions(
                epochs=config.finetune_epochs, location_weight=location_weight),
                patch=config.patch, seed=config.seed + k, name=f"trunk_{k + 1}")
            trunks.append(trunk)
    minutes = round((time.perf_counter() - started) / 60, 1)
    return [{**score(f"location weight {w:g}", trunks, data, folds, config.patch),
             "seed": config.seed, "minutes": minutes} for w, trunks in arms.items()]


def _say(message: str) -> None:
    if "best epoch" in message:
        print(message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[TrainConfig.seed])
    parser.add_argument("--weight", type=float, default=TrainConfig.finetune_location_weight)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--finetune-epochs", type=int, default=TrainConfig.finetune_epochs)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.weight <= 0:
        raise SystemExit("--weight must be above 0: the other arm is weight 0")
    import models.layers  # noqa: F401  (registers the custom layers)

    rows = [row for seed in args.seeds for row in compare(args.data, TrainConfig(
        seed=seed, epochs=args.epochs, finetune_epochs=args.finetune_epochs), args.weight)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_paired(rows, args.seeds, "fine-tuning", "location labels")


if __name__ == "__main__":
    main()
