"""``mammo models merge``: one ensemble from the trunks of models trained on the same folds.

Two recipes can be equally good on average and still err on different images: on split
20261125 the pretrained trunks of 1.5.0 ranked malignant findings better and the fine-tuned
trunks of 1.4.0 pointed better (README). Models trained by ``mammo train`` with the same
seed on the same data hold one trunk (or ``--members`` trunks) per patient fold of the very
same folds, so their trunks can be pooled fold by fold with the validation staying honest:
each image is still scored only by trunks that never saw it. The merged model is then
validated, calibrated and written exactly as a training run writes its model
(``models.train_run.write_model``); nothing is retrained.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from models.datasets import load_dataset
from models.prepared import prepare
from models.registry import ModelSpec, new_model_dir
from models.repeated_splits import recipe
from models.splits import patient_folds, require_recorded_folds
from models.train_run import (
    CrossValidation,
    TrainConfig,
    add_held_out,
    finish_held_out,
    require_training_data,
    trunk_name,
    write_model,
)
from models.training import seen_by_trunks
from shared.errors import ConfigurationError

Progress = Callable[[str], None]
# What must agree for trunks to be pooled: the same folds (data, seed, fold count) and the
# same whole-image model around them (input, patch, flips, local contrast).
SHARED = ("seed", "folds", "input_size", "patch", "tta_flips", "local_contrast_sigma",
          "max_pixels")
# Recipe options a merge may mix: where the sources differ, the merged metadata keeps them
# per source only (``merged_from``), so no single value claims to be the recipe.
MIXABLE = ("pretrain_epochs", "finetune_epochs", "finetune_location_weight", "average_from",
           "epochs", "patience", "widths", "stage_convs", "negatives_ratio", "hard_negatives")
PER_SOURCE = (*MIXABLE, "members", "command")


def check_compatible(specs: Sequence[ModelSpec]) -> list[TrainConfig]:
    """The sources' recipes; raise ``ConfigurationError`` unless their trunks can be pooled."""
    if len(specs) < 2:
        raise ConfigurationError("Name at least two models to merge.")
    if len({s.directory.resolve() for s in specs}) < len(specs):
        raise ConfigurationError("A model is named twice: merge different models.")
    configs = []
    for spec in specs:
        if spec.metadata.get("merged_from"):
            raise ConfigurationError(
                f"{spec.name} {spec.version} is itself a merge: merge its sources "
                f"({', '.join(s['version'] for s in spec.metadata['merged_from'])}) instead.")
        if "training" not in spec.metadata:
            raise ConfigurationError(f"{spec.directory} records no training recipe: only "
                                     "`mammo train` outputs can be merged.")
        configs.append(recipe(spec.metadata))
    first = specs[0].metadata
    for spec, config in zip(specs[1:], configs[1:], strict=True):
        differ = [k for k in SHARED if getattr(config, k) != getattr(configs[0], k)]
        if spec.metadata["training_data"]["sha256"] != first["training_data"]["sha256"]:
            differ.insert(0, "training data")
        if spec.metadata["preprocessing_version"] != first["preprocessing_version"]:
            differ.insert(0, "preprocessing version")
        if differ:
            raise ConfigurationError(
                f"{spec.name} {spec.version} and {specs[0].name} {specs[0].version} differ in "
                f"{', '.join(differ)}: only models trained on the same data with the same "
                "seed and folds (so each image is scored by trunks that never saw it) and "
                "the same input can be merged. Train the other recipe with `mammo train "
                f"--seed {configs[0].seed}`.")
    return configs


def _fold_trunks(model: Any, fold: int, members: int) -> list[Any]:
    return [model.get_layer(trunk_name(fold, m, members)) for m in range(members)]


def _renamed(trunk: Any, name: str) -> Any:
    """``trunk`` (architecture and weights) as a trunk called ``name``: layer names must be
    unique in the merged model, and every source calls its fold trunks trunk_1 ... trunk_K.
    Rebuilt from the trunk's own saved config, so merge needs no knowledge of the
    architecture options a source was trained with. Names of the layers inside a trunk need
    only be unique within it."""
    copy = type(trunk).from_config({**trunk.get_config(), "name": name})
    copy.set_weights(trunk.get_weights())
    return copy


def merge(specs: Sequence[ModelSpec], data_path: Path, output: Path, version: str,
          command: str, say: Progress) -> Path:
    """Write ``output/<name>/<version>``: the trunks of ``specs`` pooled fold by fold."""
    import keras

    import models.layers  # noqa: F401  (registers the custom layers the models hold)

    started = time.perf_counter()
    configs = check_compatible(specs)
    first = configs[0]
    new_model_dir(output, first.name, version)  # not after minutes of work
    data = prepare(load_dataset(data_path), first.input_size, max_pixels=first.max_pixels,
                   progress=say)
    require_training_data(data, specs[0].metadata, data_path)
    folds = patient_folds(data.labels, data.patients, n_folds=first.folds, seed=first.seed)
    for spec in specs:  # each trunk scores only the fold it never saw
        require_recorded_folds(spec.metadata, data.images, folds)
    members = sum(c.members for c in configs)
    config = dataclasses.replace(first, version=version, members=members, command=command)
    loaded = [keras.models.load_model(s.model_path, compile=False, safe_mode=True)
              for s in specs]
    seen = seen_by_trunks(data, first.local_contrast_sigma)
    cv = CrossValidation.empty(len(data.images))
    for k, fold in enumerate(folds):
        say(f"fold {k + 1}/{len(folds)}: {members} trunks from "
            f"{', '.join(s.version for s in specs)}")
        trunks = [trunk for model, c in zip(loaded, configs, strict=True)
                  for trunk in _fold_trunks(model, k, c.members)]
        for m, trunk in enumerate(trunks):
            add_held_out(cv, _renamed(trunk, trunk_name(k, m, members)), seen, fold, config,
                         weight=1 / members, say=say)
    finish_held_out(cv, seen, folds)
    sources = [{"version": s.version, "sha256": s.sha256,
                **{k: s.metadata["training"].get(k) for k in PER_SOURCE},
                "minutes": round(s.metadata["training"].get("seconds", 0) / 60, 1),
                "validation": {k: s.metadata["validation"][k]
                               for k in ("auc_abnormal", "auc_malignant", "ece")},
                "localisation": s.metadata["localisation"]["peak_inside_circle"]}
               for s in specs]
    # Fold-major, as the merged trunks are ordered.
    best = [s.metadata["training"]["best_epochs"] for s in specs]
    training = {"best_epochs": [e for k in range(first.folds)
                                for b, c in zip(best, configs, strict=True)
                                for e in b[k * c.members:(k + 1) * c.members]]}
    mixed = [k for k in MIXABLE if len({str(getattr(c, k)) for c in configs}) > 1]
    return write_model(data_path, output, data, folds, cv, config, say, started=started,
                       training=training, extra={"merged_from": sources}, drop=mixed)
