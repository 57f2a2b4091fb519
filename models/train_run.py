"""``mammo train``: cross-validate, compare with the baseline, calibrate, and write the model.

1. Preprocess every image once, through the worker's own preprocessing (and, with
   ``--local-contrast``, through the model's own ``LocalContrast`` layer).
2. K patient-level folds. Per fold, train ``--members`` patch trunks (default one; each with
   its own seed and early stopping on an inner patient split of the training part), then
   score the held-out fold's whole images.
3. Held-out evidence -> image head fitted on the other folds -> held-out probabilities:
   the validation metrics (bootstrap CIs over patients), the localisation rate, and the
   same folds for the feature-based baseline.
4. The shipped model: all the fold trunks as an ensemble, with the head fitted on all
   held-out evidence; plots, metadata and MODEL_CARD.md beside it.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics, plots
from models.ablation import compare, held_out_predictions, shipped_head
from models.architecture import MIRROR_TTA, TTA_FLIPS, WIDTHS
from models.baseline import cross_validated_probabilities, feature_matrix
from models.bilateral import fit_bilateral, held_out_bilateral, pair_keys, partners
from models.calibration import fit_head
from models.datasets import (
    LabelledImage,
    content_sha256,
    copies_warning,
    data_hash,
    layout_of,
    left_out_warning,
    load_dataset,
    unknown_patients_warning,
    without_patient,
)
from models.finetune import FinetuneOptions, finetune_on_images
from models.heatmaps import localisation_rate, peak_distance_ratio
from models.metrics import format_metric
from models.patches import PatchPlan
from models.prepared import PreparedSet, prepare
from models.pretraining import PretrainOptions, pretrained_trunk
from models.registry import MODEL_FILE, new_model_dir, write_model_dir
from models.splits import (
    EARLY_STOPPING_FRACTION,
    folds_digest,
    inner_validation,
    patient_folds,
    require_every_class,
    require_inner_splits,
)
from models.training import (
    TrainOptions,
    TrunkResult,
    predict_maps,
    seen_by_trunks,
    train_trunk,
)
from shared.enums import CLASSES
from shared.errors import DatasetError
from shared.imaging.preprocess import PREPROCESSING_VERSION, TARGET_SPACING_MM
from shared.scoring import LABEL_RULE

Progress = Callable[[str], None]
MEMBER_SEED_STEP = 100  # member m of fold k trains with seed + k + 100 m
PLOTS = {
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "roc": "roc.png",
    "reliability": "reliability.png",
    "localisation": "localisation.png",
}


@dataclass(frozen=True)
class TrainConfig:
    name: str = "default"
    version: str = "1.8.0"
    input_size: tuple[int, int] = (512, 512)
    folds: int = 5
    seed: int = 20261125
    epochs: int = 36
    patience: int = 12
    patch: int = 64
    widths: tuple[int, ...] = WIDTHS
    # 3 x 3 convolutions per pooled stage of each trunk (models.architecture.build_trunk).
    # 2 since 1.8.0: over 4 patient splits +0.036 in the mean of the two AUCs against one
    # (1.7.0's trunk), at 2.2 times the multiply-adds (models/EXPERIMENTS.md).
    stage_convs: int = 2
    bootstrap_rounds: int = 1000
    max_pixels: int = 80_000_000
    tta_flips: tuple[tuple[int, ...], ...] = TTA_FLIPS
    local_contrast_sigma: float | None = None  # trunks behind LocalContrast(sigma) if set
    members: int = 1  # trunks per fold, each with its own seed: the ensemble is folds x members
    # Contrastive epochs on the fold's unlabelled training tissue before patch training
    # (models.pretraining; 0 = random initial weights). Over 4 patient splits the pretrained
    # recipe (1.5.0's: 20 epochs, no fine-tuning) matched this default recipe on average
    # (0.596 against 0.599 on the two AUCs) at 1.6 times the training time, so off; pooled
    # with this recipe's trunks (models.merge) they helped on 2 of 3 splits (README).
    pretrain_epochs: int = 0
    # Whole-image epochs after patch training (models.finetune; 0 = off). On randomly
    # initialised trunks 8 epochs raised the abnormal AUC and the localisation on 3 of 3
    # splits (1.4.0); on pretrained trunks they lowered both AUCs (README).
    finetune_epochs: int = 8
    # Weight of the per-location loss in fine-tuning (models.finetune; 0 = image labels
    # only, 1.4.0's recipe): every location of every training image learns what the
    # circles say of it. Paired on 3 patient splits, weight 1 raised the mean of the two
    # AUCs by +0.046, +0.016 and +0.039, the abnormal AUC on every split (1.7.0, README).
    # Weight 3, or 16 epochs at weight 1, gained nothing over it (session 15, README).
    finetune_location_weight: float = 1.0
    # Patch-training epoch from which the trunk's weights are averaged (stochastic weight
    # averaging, models.training); 0 = the epoch with the lowest patch validation loss.
    average_from: int = 0
    # MixUp's Beta alpha in patch training (models.training.mix_up); 0 = off.
    mixup: float = 0.0
    # Focal loss's gamma in patch training (models.training.patch_loss); 0 = off, plain
    # cross-entropy.
    focal_gamma: float = 0.0
    # Normal patches drawn per lesion patch, and normal locations the trunk scored highest
    # mined per training image every few epochs (they replace up to half the normal
    # patches). 5 and 8 were measured against these defaults on 3 splits: no gain (README).
    negatives_ratio: float = PatchPlan.negatives_ratio
    hard_negatives: int = TrainOptions.hard_negatives
    # Scores read against the patient's other breast where it is present (models.bilateral).
    # Abnormal only: over 4 patient splits it gained abnormal-vs-normal AUC on every split
    # while reading P(malignant) in pairs lost malignant-vs-rest AUC on every split (README).
    bilateral: tuple[str, ...] = ("abnormal",)
    command: str = "mammo train DATA"  # recorded in the metadata and the model card


@dataclass
class CrossValidation:
    probabilities: np.ndarray
    evidence: np.ndarray
    # With the other test-time flips (mirror if the shipped model has none): the ablation.
    alternative_evidence: np.ndarray
    heatmaps: list[np.ndarray] = field(default_factory=list)
    histories: list[dict[str, list[float]]] = field(default_factory=list)
    trunks: list[Any] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    finetune_losses: list[list[float]] = field(default_factory=list)  # per trunk, per epoch
    pretrain_losses: list[list[float]] = field(default_factory=list)  # per trunk, per epoch
    evidence_stats: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    member_heatmaps: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> CrossValidation:
        return cls(np.zeros((n, 3)), np.zeros((n, 9)), np.zeros((n, 9)))


def require_training_data(data: PreparedSet, meta: Mapping[str, Any], data_path: Path) -> None:
    """Raise ``DatasetError`` unless ``data`` (as prepared, skipped images left out, the way
    a training run hashes it) is the data the model of ``meta`` trained on."""
    found, recorded = data_hash(data.images), meta["training_data"]["sha256"]
    if found != recorded:
        raise DatasetError(
            f"{data_path} is not the data this model trained on (training data sha256 "
            f"{found[:12]}, the model's {recorded[:12]}): give the same labelled images, or "
            "the figures would not describe this model's recipe.")


def cross_validate(data: PreparedSet, config: TrainConfig,
                   folds: list[tuple[np.ndarray, np.ndarray]], say: Progress) -> CrossValidation:
    """Per fold, ``config.members`` trunks (own seeds and early-stopping splits); an image's
    held-out evidence and heatmap are the means over its fold's members, as the shipped
    ensemble averages all trunks."""
    require_inner_splits(data.labels, data.patients, folds)
    cv = CrossValidation.empty(len(data.images))
    for k, (train, held_out) in enumerate(folds):
        say(f"fold {k + 1}/{len(folds)}: {len(train)} training images, {len(held_out)} held "
            f"out, {config.members} trunk(s)")
        for member in range(config.members):
            seed = config.seed + k + MEMBER_SEED_STEP * member
            trunk = _train_member(data, config, (train, held_out), seed,
                                  trunk_name(k, member, config.members), cv, say)
            add_held_out(cv, trunk, data, (train, held_out), config, weight=1 / config.members,
                         say=say)
    return finish_held_out(cv, data, folds)


def add_held_out(cv: CrossValidation, trunk: Any, data: PreparedSet,
                 fold: tuple[np.ndarray, np.ndarray], config: TrainConfig, *, weight: float,
                 say: Progress) -> None:
    """Append ``trunk`` (trained on ``fold``'s training part) to ``cv`` with its evidence
    scale, and add ``weight`` times its standardised held-out evidence (shipped and
    alternative flips) and its held-out heatmaps to the fold's."""
    held_out = fold[1]
    evidence, stats, maps = held_out_evidence(trunk, data, fold, config.patch,
                                              config.tta_flips)
    alternative = held_out_evidence(trunk, data, fold, config.patch,
                                    alternative_flips(config.tta_flips))[0]
    truth = data.labels[held_out]
    say(f"{trunk.name}: held-out AUC of the strongest location alone: abnormal "
        f"{format_metric(metrics.auc(truth > 0, maps['evidence'][:, 2]))}, malignant "
        f"{format_metric(metrics.auc(truth == 2, maps['evidence'][:, 1]))}")
    cv.trunks.append(trunk)
    cv.evidence_stats.append(stats)
    cv.evidence[held_out] += weight * evidence
    cv.alternative_evidence[held_out] += weight * alternative
    for i, heatmap in zip(held_out, maps["heatmap"], strict=True):
        cv.member_heatmaps.setdefault(int(i), []).append(heatmap)


def finish_held_out(cv: CrossValidation, data: PreparedSet,
                    folds: list[tuple[np.ndarray, np.ndarray]]) -> CrossValidation:
    """Average each image's member heatmaps and turn the held-out evidence into held-out
    probabilities, each fold's head fitted on the other folds' evidence."""
    cv.heatmaps = [np.mean(cv.member_heatmaps[i], axis=0) for i in range(len(data.images))]
    cv.probabilities = held_out_predictions(cv.evidence, data.labels, folds, shipped_head)
    return cv


def trunk_name(fold: int, member: int, members: int) -> str:
    """The layer name of member ``member`` of fold ``fold``'s trunks (both from 0) in a
    model with ``members`` trunks per fold."""
    return f"trunk_{fold + 1}" + (f"_{member + 1}" if members > 1 else "")


def _train_member(data: PreparedSet, config: TrainConfig, fold: tuple[np.ndarray, np.ndarray],
                  seed: int, name: str, cv: CrossValidation, say: Progress) -> Any:
    """Train one trunk on ``fold``'s training part (its losses, history and best epoch
    recorded in ``cv``) and return it."""
    result = patch_trained(data, config, fold, seed, name, say, cv)
    cv.finetune_losses.append(finetune_on_images(
        result.trunk, data.subset(fold[0]), FinetuneOptions(
            epochs=config.finetune_epochs, location_weight=config.finetune_location_weight),
        patch=config.patch, seed=seed, name=name, progress=say))
    cv.histories.append(result.history)
    cv.best_epochs.append(result.best_epoch)
    return result.trunk


def patch_options(config: TrainConfig) -> TrainOptions:
    """What of ``config`` patch training (``models.training.train_trunk``) uses."""
    return TrainOptions(epochs=config.epochs, patience=config.patience,
                        plan=PatchPlan(patch=config.patch, negatives_ratio=config.negatives_ratio),
                        hard_negatives=config.hard_negatives, widths=config.widths,
                        stage_convs=config.stage_convs, average_from=config.average_from,
                        mixup=config.mixup, focal_gamma=config.focal_gamma)


def patch_trained(data: PreparedSet, config: TrainConfig, fold: tuple[np.ndarray, np.ndarray],
                  seed: int, name: str, say: Progress,
                  cv: CrossValidation | None = None) -> TrunkResult:
    """The trunk of ``fold`` after ``config``'s pretraining (its losses recorded in ``cv``)
    and patch training, early-stopped on a patient-level part of the fold's training images;
    whole-image fine-tuning comes after."""
    train = fold[0]
    labels, patients = data.labels, data.patients
    options = patch_options(config)
    fit_idx, stop_idx = inner_validation(labels[train], patients[train],
                                         fraction=EARLY_STOPPING_FRACTION, seed=seed)
    say(f"{name}: {len(stop_idx)} of the training images kept apart for early stopping")
    initial = None
    if config.pretrain_epochs:
        initial, losses = pretrained_trunk(
            name, config.widths, data.subset(train),
            PretrainOptions(epochs=config.pretrain_epochs), patch=config.patch, seed=seed,
            stage_convs=config.stage_convs, progress=say)
        if cv is not None:
            cv.pretrain_losses.append(losses)
    result = train_trunk(data.subset(train[fit_idx]), data.subset(train[stop_idx]), options,
                         seed=seed, name=name, progress=say, trunk=initial)
    say(f"{name}: best epoch {result.best_epoch}, {result.seconds:.0f} s")
    return result


def held_out_evidence(
    trunk: Any, data: PreparedSet, fold: tuple[np.ndarray, np.ndarray], patch: int,
    flips: tuple[tuple[int, ...], ...],
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """(held-out evidence standardised by the trunk's evidence on its own training images,
    that (mean, std), the held-out maps): fold trunks speak on different scales."""
    train, held_out = fold
    own = predict_maps([trunk], data.subset(train), patch, flips=flips)["evidence"]
    stats = (own.mean(axis=0), own.std(axis=0) + 1e-3)
    maps = predict_maps([trunk], data.subset(held_out), patch, flips=flips)
    return (maps["evidence"] - stats[0]) / stats[1], stats, maps


def alternative_flips(flips: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """What the ablation sets against the shipped flips: none, or else the mirror."""
    return MIRROR_TTA if tuple(map(tuple, flips)) == ((),) else ((),)


def bilateral_validation(images: list[LabelledImage], probs: np.ndarray,
                         folds: list[tuple[np.ndarray, np.ndarray]], scores: tuple[str, ...],
                         ) -> tuple[dict[str, Any], np.ndarray] | None:
    """The head reading ``scores`` against the other breast, fitted on all held-out
    probabilities (shipped), and each fold's bilateral probabilities from a head fitted on
    the other folds (validated); None without scores or patient pairs."""
    partner = partners(pair_keys(images))
    if not scores or not (partner >= 0).any():
        return None
    labels = np.array([i.class_index for i in images], dtype=np.int64)
    head = fit_bilateral(probs, labels, partner, scores)
    held_out = held_out_bilateral(probs, labels, partner, folds, scores)
    return {"scores": list(head.scores), "head": head.to_config(),
            "images_paired": int((partner >= 0).sum())}, held_out


def validation_report(truth: np.ndarray, probs: np.ndarray, patients: np.ndarray,
                      config: TrainConfig) -> dict[str, Any]:
    """Held-out figures with 95% bootstrap intervals resampling patients, and the label
    rule their accuracy and confusion matrix count (the card names it; older models'
    figures, recorded without it, counted the top class)."""
    intervals = metrics.bootstrap_intervals(truth, probs, patients,
                                            rounds=config.bootstrap_rounds, seed=config.seed)
    return {**metrics.summary(truth, probs),
            "ci95": {k: list(v) if v else None for k, v in intervals.items()},
            "label_rule": LABEL_RULE}


def train(data_path: Path, output: Path, config: TrainConfig, say: Progress) -> Path:
    """Run the whole training; return the model directory it wrote."""
    new_model_dir(output, config.name, config.version)  # not after an hour of training
    started = time.perf_counter()
    images = load_dataset(data_path)
    require_every_class(np.array([i.class_index for i in images], dtype=np.int64),
                        np.array([i.patient_id for i in images]), config.folds)
    say(f"{len(images)} labelled images from {data_path}; "
        f"preprocessing version {PREPROCESSING_VERSION}, input {config.input_size}")
    for warning in (unknown_patients_warning(images, layout_of(data_path)),
                    copies_warning(images), left_out_warning(images, data_path)):
        if warning is not None:
            say(f"warning: {warning}")
    data = prepare(images, config.input_size, max_pixels=config.max_pixels, progress=say)
    # Again on what could be read; the warning (few patients per fold) once.
    if (few := require_every_class(data.labels, data.patients, config.folds)) is not None:
        say(f"warning: {few}")
    folds = patient_folds(data.labels, data.patients, n_folds=config.folds, seed=config.seed)
    cv = cross_validate(seen_by_trunks(data, config.local_contrast_sigma), config, folds, say)
    training = {"best_epochs": cv.best_epochs,
                "finetune_losses": [[round(v, 4) for v in losses]
                                    for losses in cv.finetune_losses],
                "pretrain_losses": [[round(v, 4) for v in losses]
                                    for losses in cv.pretrain_losses]}
    return write_model(data_path, output, data, folds, cv, config, say, started=started,
                       training=training)


def write_model(data_path: Path, output: Path, data: PreparedSet,
                folds: list[tuple[np.ndarray, np.ndarray]], cv: CrossValidation,
                config: TrainConfig, say: Progress, *, started: float,
                training: dict[str, Any], extra: dict[str, Any] | None = None,
                drop: Sequence[str] = ()) -> Path:
    """Validate ``cv``'s held-out results (bootstrap intervals, baseline on the same folds,
    bilateral head, localisation, ablation) and write the model directory: the ensemble of
    ``cv.trunks`` with the head fitted on all held-out evidence, plots, metadata (``training``
    and ``extra`` added to what every model records, ``config``'s ``drop`` fields left out)
    and MODEL_CARD.md."""
    labels, patients = data.labels, data.patients
    validation = validation_report(labels, cv.probabilities, patients, config)
    bilateral = bilateral_validation(data.images, cv.probabilities, folds, config.bilateral)
    if bilateral is not None:
        bilateral[0]["validation"] = validation_report(labels, bilateral[1], patients,
                                                       config)
    say("baseline: intensity and texture features + logistic regression, same folds")
    baseline_probs = cross_validated_probabilities(feature_matrix(data.pixels), labels, folds)
    baseline = validation_report(labels, baseline_probs, patients, config)
    rate, scored = localisation_rate(cv.heatmaps, data.circles, config.patch)
    ratios = [peak_distance_ratio(h, c, config.patch)
              for h, c in zip(cv.heatmaps, data.circles, strict=True) if c]
    head = fit_head(cv.evidence, labels)
    alternative = alternative_flips(config.tta_flips)
    say(f"ablation: other heads, and test-time flips {flip_names(alternative)}, on the same "
        "held-out evidence")
    ablation = compare({flip_names(config.tta_flips): cv.evidence,
                        flip_names(alternative): cv.alternative_evidence}, labels, folds)

    from models.architecture import build_whole_image_model

    model = build_whole_image_model(cv.trunks, input_size=config.input_size, patch=config.patch,
                                    evidence_stats=cv.evidence_stats,
                                    head=head.layer_config(), flips=config.tta_flips,
                                    local_contrast=config.local_contrast_sigma)
    directory = output / config.name / config.version
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    figures = dict(PLOTS)
    if cv.histories:
        plots.training_curves(cv.histories, [t.name for t in cv.trunks],
                              directory / PLOTS["training_curves"])
    else:  # trunks trained elsewhere (models.merge): their curves are in their own models
        del figures["training_curves"]
    plots.confusion(validation["confusion_matrix"], directory / PLOTS["confusion_matrix"],
                    "Held-out (cross-validated) predictions, each image alone")
    curves = {"CNN (held-out folds)": cv.probabilities,
              "feature baseline (same folds)": baseline_probs}
    if bilateral is not None:
        curves["CNN read with the other breast"] = bilateral[1]
    plots.roc_curves(labels, curves, directory / PLOTS["roc"])
    plots.reliability(labels, cv.probabilities, directory / PLOTS["reliability"])
    plots.localisation(ratios, directory / PLOTS["localisation"])
    _write_validation_predictions(directory, data, cv.probabilities)
    seconds = time.perf_counter() - started
    counts = {c.value: int((labels == i).sum()) for i, c in enumerate(CLASSES)}
    extra = {
        "architecture": "patch-trained all-convolutional ensemble (Shen et al. 2019)",
        "outputs": ["probabilities", "heatmap"], "patch": config.patch,
        "heatmap_stride": 16, "ensemble_members": len(cv.trunks),
        "pixel_size_mm": TARGET_SPACING_MM, "head": head.describe(),
        "tta_flips": [list(f) for f in config.tta_flips],
        "seed": config.seed, "training_data": {
            "source": str(data_path), "sha256": data_hash(data.images), "images": len(labels),
            "patients": len(set(patients.tolist())), "classes": counts,
            "skipped": [list(s) for s in data.skipped],
            # What the model card says about the data rests on these, not on assumptions.
            "layout": layout_of(data_path),
            "images_with_circles": sum(1 for c in data.circles if c),
            "held_out_per_fold": [len(held_out) for _, held_out in folds],
            "folds_sha256": folds_digest(data.images, folds),
            "images_without_patient": without_patient(data.images)},
        "training": {**{k: v for k, v in asdict(config).items() if k not in drop},
                     "input_size": list(config.input_size),
                     "tta_flips": [list(f) for f in config.tta_flips],
                     **training, "seconds": round(seconds, 1),
                     "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, no GPU"
                     if not _has_gpu() else "GPU"},
        "validation": validation, "baseline": baseline, "ablation": ablation,
        "bilateral": None if bilateral is None else bilateral[0],
        "localisation": {"peak_inside_circle": rate if scored else None, "images": scored},
        "plots": figures, **(extra or {}),
    }
    spec = write_model_dir(directory, name=config.name, version=config.version,
                           input_size=config.input_size,
                           preprocessing_version=PREPROCESSING_VERSION, extra=extra)
    from models.model_card import write_model_card

    write_model_card(spec.directory, spec.metadata)
    say(f"wrote {directory} in {seconds / 60:.1f} min: validation AUC abnormal "
        f"{format_metric(validation['auc_abnormal'])}, malignant "
        f"{format_metric(validation['auc_malignant'])}, "
        f"ECE {validation['ece']:.3f}; " + (f"heatmap peak in circle {rate:.2f} of {scored}"
                                            if scored else "no annotated circles")
        + skipped_note(data.skipped))
    if bilateral is not None:
        paired = bilateral[0]["validation"]
        say(f"read with the other breast ({', '.join(bilateral[0]['scores'])}): AUC abnormal "
            f"{format_metric(paired['auc_abnormal'])}, malignant "
            f"{format_metric(paired['auc_malignant'])}, ECE {paired['ece']:.3f}")
    return directory


def skipped_note(skipped: Sequence[Sequence[str]]) -> str:
    """What the summary line adds where files could not be read: they are in neither the
    training nor the figures, and the card and metadata name them."""
    if not skipped:
        return ""
    n = len(skipped)
    return (f"; {n} unreadable file{'' if n == 1 else 's'} skipped, in neither the training "
            "nor these figures (MODEL_CARD.md and metadata.json training_data.skipped name "
            f"{'it' if n == 1 else 'them'})")


def _write_validation_predictions(directory: Path, data: PreparedSet, probs: np.ndarray) -> None:
    # With each image's content digests (its file's sha256, its pixels'), by which
    # ``mammo evaluate`` knows a training image whatever its name or format.
    pixels: Sequence[str | None] = data.digests or [None] * len(data.images)
    rows = [{"id": image.id, "truth": image.label.value,
             **{f"p_{c.value}": round(float(p), 4) for c, p in zip(CLASSES, row, strict=True)},
             "sha256": content_sha256(image.path),
             **({"pixels": digest} if digest else {})}
            for image, row, digest in zip(data.images, probs, pixels, strict=True)]
    (directory / "validation_predictions.json").write_text(json.dumps(rows, indent=1) + "\n",
                                                           encoding="utf-8")


def flip_names(flips: tuple[tuple[int, ...], ...]) -> str:
    """How the ablation table names a set of test-time flips ("none": the image once)."""
    if tuple(map(tuple, flips)) == ((),):
        return "none"
    names = {(): "image", (1,): "up-down", (2,): "left-right", (1, 2): "both"}
    return " + ".join(names.get(tuple(f), str(f)) for f in flips)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
