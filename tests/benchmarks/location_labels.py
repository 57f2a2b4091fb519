"""Whole-image fine-tuning recipes compared on the same patch-trained trunks.

    python -m tests.benchmarks.location_labels [--data ../shared/data/mini-mias]
        [--seeds 20261125 20261525 20261625] [--arms 0 1 3:8 1:16] [--epochs 36]
        [--finetune-epochs 8] [--json]

For each seed (each its own patient split), every fold's trunk is patch-trained once with
``mammo train``'s recipe, then copied and fine-tuned on whole images once per arm. An arm is
``WEIGHT[:EPOCHS]``: the weight of the per-location loss from the lesion circles
(``--finetune-locations``; 0 = image labels only, 1.4.0's recipe; 1 = 1.7.0's) and the
fine-tuning epochs (default ``--finetune-epochs``). Every copy is scored on the held-out fold,
so the arms differ only in the fine-tuning. Prints pooled held-out AUCs (the shipped head
fitted on the other folds), ECE and the heatmap localisation rate, and each arm's gain over
the first; nothing is asserted. About 16 minutes per seed on 2 CPU cores for patch training,
plus about 8.5 minutes per arm and 8 fine-tuning epochs (session 15).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.datasets import load_dataset
from models.finetune import FinetuneOptions, finetune_on_images
from models.prepared import prepare
from models.splits import patient_folds
from models.train_run import TrainConfig, patch_trained
from tests.benchmarks.paired import print_paired, table_row
from tests.benchmarks.whole_image_finetune import SHARED_DATA, score


@dataclass(frozen=True)
class Arm:
    location_weight: float
    epochs: int

    @classmethod
    def parse(cls, text: str, default_epochs: int) -> Arm:
        weight, _, epochs = text.partition(":")
        try:
            arm = cls(float(weight), int(epochs) if epochs else default_epochs)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"arm {text!r}: give WEIGHT or WEIGHT:EPOCHS, for example 1 or 3:16") from None
        if arm.location_weight < 0 or arm.epochs < 1:
            raise argparse.ArgumentTypeError(
                f"arm {text!r}: the weight must be 0 or more and the epochs 1 or more")
        return arm

    @property
    def name(self) -> str:
        return f"location weight {self.location_weight:g}, {self.epochs} epochs"


def compare(data_path: Path, config: TrainConfig, arms: list[Arm]) -> list[dict[str, Any]]:
    """One row per arm, in order, for the split of ``config.seed``."""
    import keras

    data = prepare(load_dataset(data_path), config.input_size, max_pixels=config.max_pixels)
    folds = patient_folds(data.labels, data.patients, n_folds=config.folds, seed=config.seed)
    tuned: dict[Arm, list[Any]] = {arm: [] for arm in arms}
    minutes = dict.fromkeys(arms, 0.0)
    for k, fold in enumerate(folds):
        trained = patch_trained(data, config, fold, config.seed + k, f"trunk_{k + 1}", _say)
        for arm in arms:
            started = time.perf_counter()
            trunk = keras.models.clone_model(trained.trunk)
            trunk.set_weights(trained.trunk.get_weights())
            finetune_on_images(trunk, data.subset(fold[0]), FinetuneOptions(
                epochs=arm.epochs, location_weight=arm.location_weight),
                patch=config.patch, seed=config.seed + k, name=f"trunk_{k + 1}")
            tuned[arm].append(trunk)
            minutes[arm] += (time.perf_counter() - started) / 60
    return [{**score(arm.name, trunks, data, folds, config.patch), "seed": config.seed,
             "minutes": round(minutes[arm], 1)} for arm, trunks in tuned.items()]


def _say(message: str) -> None:
    if "best epoch" in message:
        print(message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[TrainConfig.seed])
    parser.add_argument("--arms", nargs="+", default=[
        "0", f"{TrainConfig.finetune_location_weight:g}"],
        help="WEIGHT[:EPOCHS] per arm; the first is the one the others are measured against")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--finetune-epochs", type=int, default=TrainConfig.finetune_epochs)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        arms = [Arm.parse(text, args.finetune_epochs) for text in args.arms]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if len(arms) < 2 or len(set(arms)) < len(arms):
        parser.error("give at least two different arms")
    import models.layers  # noqa: F401  (registers the custom layers)

    rows = []
    for seed in args.seeds:
        rows += compare(args.data, TrainConfig(seed=seed, epochs=args.epochs), arms)
        for r in rows[-len(arms):]:  # as each split ends: a sweep runs for hours
            print(table_row(r), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_paired(rows, args.seeds, "fine-tuning")


if __name__ == "__main__":
    main()
