"""How much do a model's validation figures owe to its one patient split?

``mammo train`` cross-validates on one K-fold patient split (its seed's). On 258 images the
split alone moves the AUCs by several hundredths, so one split's figures can flatter or
wrong a recipe. This re-runs the model's recorded recipe (``metadata["training"]``) with
other seeds, each seed drawing its own patient folds and its own trunk initialisations,
exactly as ``mammo train --seed S`` would, and records per split the held-out figures of
the CNN and of the feature baseline on the same folds. The model's own split is the first
row, taken from its metadata. Nothing is trained on, or tuned with, withheld data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.baseline import cross_validated_probabilities, feature_matrix
from models.datasets import load_dataset
from models.heatmaps import localisation_rate
from models.prepared import prepare
from models.splits import patient_folds
from models.train_run import (
    TrainConfig,
    bilateral_validation,
    cross_validate,
    require_training_data,
)
from models.training import seen_by_trunks
from shared.errors import ConfigurationError

Progress = Callable[[str], None]
FIGURES = ("auc_abnormal", "auc_malignant", "sensitivity_at_90_specificity", "ece",
           "localisation", "baseline_auc_abnormal", "baseline_auc_malignant",
           "bilateral_auc_abnormal", "bilateral_auc_malignant")
# Every key a record row may carry (a model's own row has no date or minutes): the CSV header.
SPLIT_ROW_KEYS = ("seed", "source", "date", "minutes", *FIGURES)
OWN = "this model"
TRAINING_RUN = "training run"  # a separate `mammo train --seed S` of the same recipe
# Recipe options added after some models were trained: absent from their metadata, and
# absent meant this.
_BEFORE_OPTIONS = {"members": 1, "local_contrast_sigma": None, "bilateral": (),
                   "finetune_epochs": 0, "pretrain_epochs": 0, "average_from": 0,
                   "negatives_ratio": 2.0, "hard_negatives": 3,
                   "finetune_location_weight": 0.0, "stage_convs": 1}


def recipe(meta: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig a model's metadata records (lists back to tuples); a merged model
    (``models.merge``) has no single recipe: ``ConfigurationError``."""
    if meta.get("merged_from"):
        raise ConfigurationError(
            f"{meta['name']} {meta['version']} merges the trunks of versions "
            f"{', '.join(s['version'] for s in meta['merged_from'])}, trained with different "
            "recipes: re-run or re-split each source model instead.")
    recorded = {**_BEFORE_OPTIONS, **meta["training"]}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in recorded.items() if k in fields}
    values["input_size"] = tuple(values["input_size"])
    values["widths"] = tuple(values["widths"])
    values["tta_flips"] = tuple(tuple(f) for f in values["tta_flips"])
    values["bilateral"] = tuple(values["bilateral"])
    return TrainConfig(**values)


def _figures(validation: Mapping[str, Any], baseline: Mapping[str, Any],
             localisation: float | None,
             bilateral: Mapping[str, Any] | None) -> dict[str, float | None]:
    return {"auc_abnormal": validation["auc_abnormal"],
            "auc_malignant": validation["auc_malignant"],
            "sensitivity_at_90_specificity": validation["sensitivity_at_90_specificity"],
            "ece": validation["ece"], "localisation": localisation,
            "baseline_auc_abnormal": baseline["auc_abnormal"],
            "baseline_auc_malignant": baseline["auc_malignant"],
            "bilateral_auc_abnormal": bilateral["auc_abnormal"] if bilateral else None,
            "bilateral_auc_malignant": bilateral["auc_malignant"] if bilateral else None}


def _own_row(meta: Mapping[str, Any], source: str = OWN) -> dict[str, Any]:
    """A model's own split as a record row, from the figures its training run wrote."""
    paired = (meta.get("bilateral") or {}).get("validation")
    return {"seed": meta["seed"], "source": source,
            **_figures(meta["validation"], meta["baseline"],
                       meta["localisation"]["peak_inside_circle"], paired)}


def from_runs(meta: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
              dates: Sequence[str]) -> dict[str, Any]:
    """The repeated-split record of the model whose metadata is ``meta``, from other
    ``mammo train --seed S`` runs of exactly its recipe (``runs``: their metadata; ``dates``:
    when each was trained): the same figures a ``repeat`` would compute, read from what
    those runs wrote. Raises ``ValueError`` when a run differs in recipe or training data,
    or repeats a seed."""
    config = recipe(meta)
    check_seeds(config.seed, [int(r["seed"]) for r in runs])
    ignore = {"name", "version", "seed", "command"}
    for run in runs:
        other = recipe(run)
        differ = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ignore
                  and getattr(other, f.name) != getattr(config, f.name)]
        if run["training_data"]["sha256"] != meta["training_data"]["sha256"]:
            differ.insert(0, "training data")
        if differ:
            raise ValueError(f"the run of seed {run['seed']} differs from this model in "
                             f"{', '.join(differ)}: only runs of exactly its recipe on its "
                             "data are splits of it")
    rows = [_own_row(meta), *[
        {**_own_row(run, TRAINING_RUN), "date": date,
         "minutes": round(run["training"]["seconds"] / 60, 1)}
        for run, date in zip(runs, dates, strict=True)]]
    return {"date": max(dates), "folds": config.folds, "rows": rows, "spread": spread(rows)}


def spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Mean, sample standard deviation, min and max of each figure over the splits."""
    result: dict[str, dict[str, float] | None] = {}
    for key in FIGURES:
        # .get: records made before a figure existed lack its key
        values = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
        result[key] = None if values.size == 0 else {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max())}
    return result


def merge(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` (this model's own row first) with every re-run row of ``previous`` whose seed
    ``new`` did not run again, so a record can grow split by split across sessions; each
    re-run row keeps the date it was measured, and the spread covers all of them."""
    if not previous:
        return dict(new)
    again = {r["seed"] for r in new["rows"]}
    kept = [{**r, "date": r.get("date", previous["date"])} for r in previous["rows"]
            if r["source"] != OWN and r["seed"] not in again]
    own, *runs = new["rows"]
    rows = [own, *kept, *runs]
    return {**new, "rows": rows, "spread": spread(rows)}


def check_seeds(own: int, seeds: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``seeds`` are distinct new splits."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{list(seeds)} repeats a seed")
    if own in seeds:
        raise ValueError(f"seed {own} is the model's own split; its figures are already in "
                         "the record")


def repeat(meta: Mapping[str, Any], data_path: Path, seeds: Sequence[int], say: Progress, *,
           max_pixels: int | None = None) -> dict[str, Any]:
    """The repeated-split record of the model whose metadata is ``meta``.

    Raises ``DatasetError`` when ``data_path`` is not the data the model trained on (the
    training-data sha256 differs), ``ValueError`` when a seed repeats (the model's own
    included).
    """
    config = recipe(meta)
    check_seeds(config.seed, seeds)
    if max_pixels is not None:
        config = dataclasses.replace(config, max_pixels=max_pixels)
    data = prepare(load_dataset(data_path), config.input_size, max_pixels=config.max_pixels,
                   progress=say)
    require_training_data(data, meta, data_path)
    labels, patients = data.labels, data.patients
    seen = seen_by_trunks(data, config.local_contrast_sigma)
    features = feature_matrix(data.pixels)
    rows = [_own_row(meta)]
    for n, seed in enumerate(seeds, start=1):
        say(f"split {n}/{len(seeds)}: seed {seed}")
        started = time.perf_counter()
        split = dataclasses.replace(config, seed=seed)
        folds = patient_folds(labels, patients, n_folds=split.folds, seed=seed)
        cv = cross_validate(seen, split, folds, say)
        baseline = cross_validated_probabilities(features, labels, folds)
        rate, scored = localisation_rate(cv.heatmaps, data.circles, split.patch)
        bilateral = bilateral_validation(data.images, cv.probabilities, folds,
                                         config.bilateral)
        rows.append({"seed": seed, "source": "re-run", "date": dt.date.today().isoformat(),
                     "minutes": round((time.perf_counter() - started) / 60, 1),
                     **_figures(metrics.summary(labels, cv.probabilities),
                                metrics.summary(labels, baseline), rate if scored else None,
                                metrics.summary(labels, bilateral[1]) if bilateral else None)})
        row = {k: metrics.format_metric(v) for k, v in rows[-1].items() if k in FIGURES}
        say(f"seed {seed}: AUC abnormal / malignant {row['auc_abnormal']} / "
            f"{row['auc_malignant']}, baseline {row['baseline_auc_abnormal']} / "
            f"{row['baseline_auc_malignant']}")
    return {"date": dt.date.today().isoformat(), "folds": config.folds, "rows": rows,
            "spread": spread(rows)}
