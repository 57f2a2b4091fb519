"""Whole-image fine-tuning of a patch trunk: the second step of Shen et al. (2019).

A trunk learns from patches cut around the lesion circles; the shipped model then reads a
whole image through the trunk's per-location map and the mean log-odds of its strongest
locations (``LesionEvidence``). Fine-tuning trains the trunk further through exactly that
read-out, on whole training images with their image labels (abnormal vs normal, malignant
vs rest), so the locations that decide an image's score are the ones its label supports.
Abnormal images without a circle (distributed calcifications, asymmetries) teach here too.

Measured on the same trunks and folds before and after (tests/benchmarks/
whole_image_finetune.py, README). On randomly initialised trunks (2 patient splits): AUC
abnormal +0.024 and +0.044, malignant +0.004 and +0.024, heatmap peak inside the circle +11
and +9 points, so model 1.4.0 was fine-tuned 8 epochs. On contrastively pretrained trunks
(``models.pretraining``, model 1.5.0): AUC abnormal -0.023, malignant -0.054, peak inside the
circle +16 points, so 1.5.0 was not fine-tuned. 1.5.0's pretraining was not established
over more splits, and ``mammo train`` fine-tunes randomly initialised trunks 8 epochs by
default (``--finetune-epochs 0`` turns it off).

Image labels alone say only that an abnormal image's strongest locations should score high;
a normal breast's ~300 locations are each seen in a few patches at most, and its strongest
one (dense glandular tissue) scores as high as a lesion (models/EXPERIMENTS.md, session 12).
With ``location_weight`` each epoch also trains every location of every image on what the
annotations say of it (``location_targets``): normal everywhere in normal images and outside
the circles of annotated abnormal images, the circle's class inside. Abnormal images without
a circle teach through their image label only. Paired on the same patch-trained trunks over
3 patient splits (tests/benchmarks/location_labels.py), weight 1 raised the abnormal AUC on
every split and the mean of the two AUCs by +0.034 on average: model 1.7.0's recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.architecture import STRIDE
from models.calibration import ABNORMAL_SCORE, EVIDENCE_NAMES, MALIGNANT_SCORE
from models.heatmaps import location_centres
from models.patches import balanced_class_weights
from models.prepared import PreparedSet
from shared.enums import CLASSES, Label

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 0  # 0: the trunk stays as patch training left it
    learning_rate: float = 1e-4
    batch_size: int = 8
    top_k: int = 5
    gamma_jitter: float = 0.15  # film-like intensity jitter, as for patches
    # Weight of the per-location loss beside the image loss (0 = image labels only).
    location_weight: float = 0.0
    label_smoothing: float = 0.1  # of the location targets, as patch training smooths


def finetune_on_images(trunk: Any, train: PreparedSet, options: FinetuneOptions, *, patch: int,
                       seed: int, name: str = "trunk",
                       progress: Progress | None = None) -> list[float]:
    """Train ``trunk`` in place on ``train``'s whole images; return the loss per epoch.

    Batch normalisation keeps the statistics patch training learnt: a whole image is
    mostly background, and inference normalises with the patch statistics.
    """
    import keras

    if options.epochs <= 0:
        return []
    keras.utils.set_random_seed(seed)
    norms = [layer for layer in trunk.layers
             if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    for layer in norms:
        layer.trainable = False
    try:
        model, grid = _image_model(trunk, train.pixels.shape[1:3], patch, options.top_k)
        labels = train.labels
        targets: dict[str, np.ndarray] = {"image_scores": np.stack(
            [labels > 0, labels == 2], axis=1).astype(np.float32)}
        losses_by_output = {"image_scores": _balanced_bce(targets["image_scores"])}
        weights = {"image_scores": 1.0}
        located = (location_targets(train, grid, patch) if options.location_weight > 0
                   else np.zeros((0, 1), np.float32))
        if located[..., -1].any():
            targets["locations"] = located
            losses_by_output["locations"] = _location_loss(located, options.label_smoothing)
            weights["locations"] = options.location_weight
        model.compile(optimizer=keras.optimizers.Adam(options.learning_rate),
                      loss=losses_by_output, loss_weights=weights)
        rng = np.random.default_rng(seed)
        losses: list[float] = []
        for epoch in range(1, options.epochs + 1):
            images, flipped = _augmented(train.pixels, rng, options.gamma_jitter)
            fit = model.fit(images, {k: _flip_rows(v, flipped) for k, v in targets.items()},
                            batch_size=options.batch_size, epochs=1, verbose=0, shuffle=True)
            losses.append(float(fit.history["loss"][0]))
            if progress:
                progress(f"{name} whole-image epoch {epoch}/{options.epochs}: "
                         f"loss {losses[-1]:.3f} ({len(labels)} images)")
    finally:
        for layer in norms:
            layer.trainable = True
    return losses


def _image_model(trunk: Any, size: tuple[int, int], patch: int,
                 top_k: int) -> tuple[Any, tuple[int, int]]:
    """Trunk -> the shipped pooling and evidence -> {"image_scores": (abnormal, malignant)
    image logits, "locations": the per-location probabilities}, and the locations' grid."""
    import keras

    from models.layers import LesionEvidence

    inputs = keras.Input((*size, 1))
    logits = keras.layers.AveragePooling2D(patch // STRIDE, strides=1)(trunk(inputs))
    probabilities = keras.layers.Softmax(axis=-1, name="locations")(logits)
    evidence = LesionEvidence(top_k=top_k)(probabilities)
    model = keras.Model(inputs, {"image_scores": _image_scores()(evidence),
                                 "locations": probabilities}, name="whole_image_finetune")
    return model, (int(probabilities.shape[1]), int(probabilities.shape[2]))


def location_targets(data: PreparedSet, grid: tuple[int, int], patch: int) -> np.ndarray:
    """(n, gh, gw, 4): per map location, the one-hot class the annotations give it and a
    last channel that is 1 where they give one. A location is inside a circle when its
    centre is (circles smaller than a location's stride count as that large)."""
    xs, ys = location_centres(grid, patch)
    out = np.zeros((len(data.images), *grid, len(CLASSES) + 1), np.float32)
    for i, (image, circles) in enumerate(zip(data.images, data.circles, strict=True)):
        if image.label is not Label.NORMAL and not circles:
            continue  # somewhere abnormal, nowhere known: no location is labelled
        classes = np.zeros(grid, np.int64)
        for circle in circles:
            reach = max(circle.radius, STRIDE / 2.0)
            classes[(xs - circle.x) ** 2 + (ys - circle.y) ** 2 <= reach**2] = \
                CLASSES.index(circle.severity)
        out[i, :, :, :-1] = np.eye(len(CLASSES), dtype=np.float32)[classes]
        out[i, :, :, -1] = 1.0
    return out


def _location_loss(targets: np.ndarray, smoothing: float) -> Callable[[Any, Any], Any]:
    """Cross-entropy per labelled location, classes balanced over all labelled locations
    (a lesion covers a few of an image's ~800), averaged per image."""
    from keras import ops

    labelled = targets[..., -1] > 0
    balanced = balanced_class_weights(targets[..., :-1][labelled].argmax(axis=-1))
    class_weights = ops.convert_to_tensor(
        np.array([balanced[c] for c in range(len(CLASSES))], np.float32))

    def loss(y_true: Any, y_pred: Any) -> Any:
        one_hot, mask = y_true[..., :-1], y_true[..., -1]
        soft = one_hot * (1.0 - smoothing) + smoothing / len(CLASSES)
        entropy = -ops.sum(soft * ops.log(ops.clip(y_pred, 1e-7, 1.0)), axis=-1)
        weighted = mask * ops.sum(one_hot * class_weights, axis=-1) * entropy
        return ops.mean(ops.reshape(weighted, (ops.shape(weighted)[0], -1)), axis=-1)

    return loss


def _balanced_bce(targets: np.ndarray) -> Callable[[Any, Any], Any]:
    """Binary cross-entropy per score, positives and negatives weighing half each: 92
    abnormal and 42 malignant of 258 images would otherwise teach "normal"."""
    from keras import ops

    positive = np.clip(targets.mean(axis=0), 1e-3, 1 - 1e-3)
    pos_weight = ops.convert_to_tensor((0.5 / positive).astype(np.float32))
    neg_weight = ops.convert_to_tensor((0.5 / (1 - positive)).astype(np.float32))

    def loss(y_true: Any, y_pred: Any) -> Any:
        weights = y_true * pos_weight + (1.0 - y_true) * neg_weight
        per_score = ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        return ops.mean(weights * per_score, axis=-1)

    return loss


def _augmented(pixels: np.ndarray, rng: np.random.Generator,
               gamma_jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Up-down mirror (the chest wall stays left) and a gamma per image; and which images
    were mirrored, so that their location targets follow."""
    out = pixels.astype(np.float32)[..., np.newaxis]
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, ::-1]
    gamma = np.exp(rng.uniform(-gamma_jitter, gamma_jitter, len(out))).astype(np.float32)
    return np.clip(out, 0.0, 1.0) ** gamma[:, None, None, None], flip


def _flip_rows(targets: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Per-location targets (n, gh, gw, c) mirrored up-down where the image was; image
    targets (n, k) as they are. Location centres are symmetric about the input's middle
    (``location_centres``), so row r of a mirrored map is row gh - 1 - r."""
    if targets.ndim < 4:
        return targets
    out = targets.copy()
    out[flipped] = out[flipped, ::-1]
    return out


def _image_scores() -> Any:
    """A layer: the two read-outs the shipped head uses (top-k mean log-odds of abnormal
    and of malignant), each with a trainable slope and intercept, as image logits."""
    import keras
    from keras import ops

    columns = [EVIDENCE_NAMES.index(ABNORMAL_SCORE), EVIDENCE_NAMES.index(MALIGNANT_SCORE)]

    class ImageScores(keras.layers.Layer):
        def build(self, input_shape: tuple[int | None, ...]) -> None:
            self.slope = self.add_weight(shape=(2,), initializer="ones", name="slope")
            self.intercept = self.add_weight(shape=(2,), initializer="zeros", name="intercept")

        def call(self, evidence: Any) -> Any:
            return ops.take(evidence, columns, axis=1) * self.slope + self.intercept

    return ImageScores(name="image_scores")
