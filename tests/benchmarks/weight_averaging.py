"""Stochastic weight averaging of the patch trunks, measured on the same training runs.

    python -m tests.benchmarks.weight_averaging [--data ../shared/data/mini-mias]
        [--seeds 20261125 20261525] [--average-from 16] [--epochs 36]
        [--finetune-epochs 8] [--json]

For each seed (each its own patient split), every fold's trunk is patch-trained once with
``mammo train``'s recipe while the weights of every epoch from ``--average-from`` on are
averaged. The run then branches: the weights of the epoch with the lowest patch validation
loss (what ``mammo train`` keeps) and the averaged weights (batch-norm statistics
re-estimated) are each fine-tuned on whole images exactly as ``mammo train`` does, and scored
on the held-out fold. Same seed, same folds, same trajectory up to the choice: the pairing
takes the patch-training noise out of the comparison. Prints pooled held-out AUCs (the
shipped head fitted on the other folds), ECE and the heatmap localisation rate; nothing is
asserted. About 40 minutes per seed on 2 CPU cores (both arms).
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
from models.training import seen_by_trunks
from tests.benchmarks.paired import print_paired
from tests.benchmarks.whole_image_finetune import SHARED_DATA, score

CHOICES = ("best epoch", "averaged")


def compare(data_path: Path, config: TrainConfig) -> list[dict[str, Any]]:
    """One row per choice of weights, for the split of ``config.seed``."""
    import keras

    seed = config.seed
    data = seen_by_trunks(prepare(load_dataset(data_path), config.input_size,
                                  max_pixels=config.max_pixels), config.local_contrast_sigma)
    folds = patient_folds(data.labels, data.patients, n_folds=config.folds, seed=seed)
    trunks: dict[str, list[Any]] = {choice: [] for choice in CHOICES}
    windows = []
    started = time.perf_counter()
    for k, fold in enumerate(folds):
        result = patch_trained(data, config, fold, seed + k, f"trunk_{k + 1}", _say)
        windows.append(result.averaged_epochs)
        for choice in CHOICES:
            trunk = keras.models.clone_model(result.trunk)
            trunk.set_weights(result.trunk.get_weights() if choice == "averaged"
                              else result.best_weights)
            finetune_on_images(trunk, data.subset(fold[0]),
                               FinetuneOptions(epochs=config.finetune_epochs),
                               patch=config.patch, seed=seed + k, name=f"{choice} {k + 1}",
                               progress=_say)
            trunks[choice].append(trunk)
    minutes = (time.perf_counter() - started) / 60
    return [{**score(choice, trunks[choice], data, folds, config.patch), "seed": seed,
             "averaged_epochs": windows, "minutes": round(minutes, 1)} for choice in CHOICES]


def _say(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[TrainConfig.seed])
    parser.add_argument("--average-from", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--finetune-epochs", type=int, default=TrainConfig.finetune_epochs)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import models.layers  # noqa: F401  (registers the custom layers)

    rows = [row for seed in args.seeds for row in compare(args.data, TrainConfig(
        seed=seed, average_from=args.average_from, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs))]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_paired(rows, args.seeds, "weights", detail="averaged_epochs")


if __name__ == "__main__":
    main()
