"""Train one patch trunk: fresh augmented patches each epoch, early stopping on an inner
patient-level validation split, best weights restored."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.architecture import WIDTHS, build_map_model, build_patch_model, build_trunk
from models.heatmaps import hard_negative_points
from models.patches import BREAST_THRESHOLD, PatchPlan, balanced_class_weights, sample_patches
from models.prepared import PreparedSet
from shared.enums import Label

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 40
    patience: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    mine_from: int = 4  # hard-negative mining starts after a few epochs of plain sampling
    mine_every: int = 3
    hard_negatives: int = 3  # mined per training image each time
    min_epochs: int = 16
    # From this epoch on, the weights of every epoch are averaged (stochastic weight
    # averaging, Izmailov et al. 2018) and the trunk ends with the average instead of the
    # epoch with the lowest patch validation loss, a choice ~30 images make noisy. 0 = off.
    average_from: int = 0
    widths: tuple[int, ...] = WIDTHS
    stage_convs: int = 1
    # MixUp (Zhang et al. 2018): each training patch blended with another, targets and
    # class weights alike, by a Beta(alpha, alpha) share; a regulariser for small data
    # sets. 0 = off.
    mixup: float = 0.0
    # Focal loss's gamma (Lin et al. 2017): each patch's loss scaled by (1 - p)^gamma, so
    # patches the trunk already gets right count less and the hard ones more. 0 = off.
    focal_gamma: float = 0.0
    plan: PatchPlan = field(default_factory=PatchPlan)


@dataclass
class TrunkResult:
    trunk: Any
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float
    # With ``average_from``: the epochs averaged, and the best epoch's weights (which the
    # trunk would otherwise hold), so the two can be compared on the same run.
    averaged_epochs: tuple[int, int] | None = None
    best_weights: list[np.ndarray] | None = None


def train_trunk(train: PreparedSet, val: PreparedSet, options: TrainOptions, *, seed: int,
                name: str, progress: Progress | None = None,
                on_epoch: Callable[[int, Any], None] | None = None,
                trunk: Any | None = None) -> TrunkResult:
    """``trunk``: start from these weights (``models.pretraining``) instead of random ones."""
    import keras

    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    if trunk is None:
        trunk = build_trunk(name, widths=options.widths, stage_convs=options.stage_convs)
    model = build_patch_model(trunk, options.plan.patch)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate),
                  loss=patch_loss(options.focal_gamma), metrics=["categorical_accuracy"])
    rng = np.random.default_rng(seed)
    val_plan = PatchPlan(**{**options.plan.__dict__, "augment": False})
    val_x, val_y = sample_patches(val, val_plan, np.random.default_rng(seed + 1))
    val_sw = _sample_weights(val_y)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [],
                                       "val_accuracy": []}
    best = (np.inf, 0, trunk.get_weights())
    average = WeightAverage(start=options.average_from)
    hard: list[tuple[int, float, float]] = []
    for epoch in range(1, options.epochs + 1):
        if epoch >= options.mine_from and (epoch - options.mine_from) % options.mine_every == 0:
            hard = mine_hard_negatives(trunk, train, options.plan.patch,
                                       per_image=options.hard_negatives)
        x, targets, weights = _epoch_patches(train, options, rng, hard)
        fit = model.fit(x, targets, sample_weight=weights,
                        batch_size=options.batch_size, epochs=1, verbose=0, shuffle=True)
        val_loss, val_acc = model.evaluate(val_x, _one_hot(val_y), sample_weight=val_sw,
                                           batch_size=256, verbose=0)
        history["loss"].append(float(fit.history["loss"][0]))
        history["accuracy"].append(float(fit.history["categorical_accuracy"][0]))
        history["val_loss"].append(float(val_loss))
        history["val_accuracy"].append(float(val_acc))
        # Patch validation on ~30 images is noisy: a "best" epoch 2 is luck, not learning.
        if val_loss < best[0] or epoch <= options.min_epochs:
            best = (float(val_loss), epoch, trunk.get_weights())
        if progress:
            progress(f"{name} epoch {epoch}/{options.epochs}: loss {history['loss'][-1]:.3f} "
                     f"acc {history['accuracy'][-1]:.2f}  val_loss {val_loss:.3f} "
                     f"val_acc {val_acc:.2f}  ({len(x)} patches)")
        average.add(epoch, trunk)
        if on_epoch:
            on_epoch(epoch, trunk)
        if epoch - best[1] >= options.patience:
            break
    seconds = time.perf_counter() - started
    if not average.count:
        trunk.set_weights(best[2])
        return TrunkResult(trunk, history, best[1], seconds)
    trunk.set_weights(average.weights())
    refresh_batch_statistics(model, sample_patches(train, options.plan, rng, hard)[0],
                             options.batch_size)
    if progress:
        progress(f"{name}: weights of epochs {average.first}-{average.last} averaged")
    return TrunkResult(trunk, history, best[1], time.perf_counter() - started,
                       (average.first, average.last), best[2])


def patch_loss(focal_gamma: float) -> Any:
    """Patch training's loss: cross-entropy, or focal cross-entropy with ``focal_gamma``."""
    import keras

    # Label smoothing: a patch label is a circle drawn by hand around a finding, not a
    # certainty about every pixel in the patch; softer targets give steadier maps.
    if not focal_gamma:
        return keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    # alpha 1: Keras multiplies every class's term by a scalar alpha alike, and the balanced
    # sample weights already even out the classes, so no second (0.25) scaling.
    return keras.losses.CategoricalFocalCrossentropy(gamma=focal_gamma, alpha=1.0,
                                                     label_smoothing=0.1)


class WeightAverage:
    """The running mean of a model's weights over the epochs from ``start`` on (0: none)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.count, self.first, self.last = 0, 0, 0
        self._sum: list[np.ndarray] = []

    def add(self, epoch: int, model: Any) -> None:
        if not self.start or epoch < self.start:
            return
        weights = model.get_weights()
        if not self.count:
            self.first, self._sum = epoch, [w.astype(np.float64) for w in weights]
        else:
            for total, w in zip(self._sum, weights, strict=True):
                np.add(total, w, out=total)
        self.count, self.last = self.count + 1, epoch

    def weights(self) -> list[np.ndarray]:
        return [(total / self.count).astype(np.float32) for total in self._sum]


def refresh_batch_statistics(model: Any, patches: np.ndarray, batch_size: int) -> None:
    """Re-estimate batch normalisation's moving statistics for the current weights: averaged
    weights never produced the averaged statistics. As SWA's ``bn_update``: forward passes in
    training mode over ``patches``, each layer's momentum set so that its statistics end as
    the plain mean over the batches; no weight changes."""
    import keras

    norms = [layer for layer in _layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    order = np.random.default_rng(0).permutation(len(patches))
    try:
        for t, start in enumerate(range(0, len(order), batch_size), start=1):
            for layer in norms:
                layer.momentum = 1.0 - 1.0 / t  # the t-th batch weighs 1/t: a running mean
            model(patches[order[start:start + batch_size]], training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def _layers(model: Any) -> list[Any]:
    """Every layer inside ``model``, nested models' included."""
    found = []
    for layer in model.layers:
        found += [layer, *(_layers(layer) if hasattr(layer, "layers") else [])]
    return found


def mine_hard_negatives(trunk: Any, data: PreparedSet, patch: int,
                        per_image: int) -> list[tuple[int, float, float]]:
    """Where the current trunk sees abnormality in tissue known to be normal."""
    maps = predict_maps([trunk], data, patch)
    points: list[tuple[int, float, float]] = []
    for i, (image, heatmap) in enumerate(zip(data.images, maps["heatmap"], strict=True)):
        if image.label is not Label.NORMAL and not data.circles[i]:
            continue  # abnormal without a circle: nowhere is known to be normal
        points += [(i, x, y) for x, y in
                   hard_negative_points(heatmap, data.circles[i], patch, per_image)]
    return points


def seen_by_trunks(data: PreparedSet, local_contrast: float | None,
                   batch_size: int = 16) -> PreparedSet:
    """``data`` as the trunks see it inside the shipped model: through ``LocalContrast``
    (the same layer) when the model has one. Computed once, before any patch is cut, so a
    patch's local mean comes from the whole breast around it, as at inference."""
    if local_contrast is None:
        return data
    from models.layers import LocalContrast

    layer = LocalContrast(local_contrast)
    seen = np.empty_like(data.pixels)
    for start in range(0, len(data.images), batch_size):
        batch = data.pixels[start:start + batch_size].astype(np.float32)[..., np.newaxis]
        seen[start:start + batch_size] = np.asarray(layer(batch))[..., 0]
    return data.with_pixels(seen, BREAST_THRESHOLD)


def predict_maps(trunks: list[Any], data: PreparedSet, patch: int, batch_size: int = 8,
                 flips: Sequence[Sequence[int]] = ((),)) -> dict[str, np.ndarray]:
    """Evidence (n, 9) and heatmaps (n, gh, gw) of ``data`` under the given trunks, with
    ``flips`` test-time augmentation (hard-negative mining uses the plain image)."""
    height, width = data.pixels.shape[1:3]
    model = build_map_model(trunks, input_size=(height, width), patch=patch, flips=flips)
    out: dict[str, list[np.ndarray]] = {"evidence": [], "heatmap": []}
    for start in range(0, len(data.images), batch_size):
        batch = data.pixels[start:start + batch_size].astype(np.float32)[..., np.newaxis]
        result = model(batch, training=False)
        for key, parts in out.items():
            parts.append(np.asarray(result[key]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _epoch_patches(train: PreparedSet, options: TrainOptions, rng: np.random.Generator,
                   hard: list[tuple[int, float, float]],
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's fresh augmented patches, their one-hot targets and class weights."""
    x, y = sample_patches(train, options.plan, rng, hard)
    targets, weights = _one_hot(y), _sample_weights(y)
    if options.mixup:
        return mix_up(x, targets, weights, options.mixup, rng)
    return x, targets, weights


def mix_up(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, alpha: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample blended with a random partner by a Beta(alpha, alpha) share."""
    share = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    partner = rng.permutation(len(x))

    def blend(a: np.ndarray) -> np.ndarray:
        s = share.reshape((-1,) + (1,) * (a.ndim - 1))
        return (s * a + (1 - s) * a[partner]).astype(np.float32)

    return blend(x), blend(targets), blend(weights)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[labels]


def _sample_weights(labels: np.ndarray) -> np.ndarray:
    """Balanced class weights per sample: 166 normal / 50 benign / 42 malignant images give
    far more normal patches, and each class should count the same."""
    weights = balanced_class_weights(labels)
    return np.array([weights[int(c)] for c in labels], np.float32)
