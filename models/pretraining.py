"""Self-supervised pretraining of a patch trunk on unlabelled breast tissue (SimCLR).

No ImageNet weights can be downloaded here, and 258 labelled images teach a trunk from
scratch. docs/MODEL-NOTES.md names contrastive pretraining on patches of these same images
as an honest way to start from more than noise: two differently augmented views of one
place in a breast (shifted, rescaled, rotated, mirrored, with other film contrast) should
map to nearby embeddings, views of other places to distant ones (Chen et al. 2020, NT-Xent
loss). No label is read, so every training image counts, normal or not, circle or not; the
images it pretrains on are the ones the trunk then trains on, never held-out ones.

The trunk's convolutions (not its 3-class output layer) learn here; a small projection head
sits on top for the contrastive loss and is thrown away afterwards, as in SimCLR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.architecture import build_trunk
from models.patches import augmented_crop, tissue_points
from models.prepared import PreparedSet

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PretrainOptions:
    epochs: int = 0  # 0: the trunk starts patch training from random weights
    pairs_per_epoch: int = 4096
    batch_size: int = 256  # contrastive learning needs many negatives per batch
    learning_rate: float = 1e-3
    temperature: float = 0.2
    shift: float = 8.0  # input pixels between the two views' centres, at most, per axis
    intensity_jitter: float = 2.0  # twice the patch training's: the views must differ
    projection: int = 64


def pretrained_trunk(name: str, widths: Sequence[int], data: PreparedSet,
                     options: PretrainOptions, *, patch: int, seed: int, stage_convs: int = 1,
                     progress: Progress | None = None) -> tuple[Any, list[float]]:
    """A new trunk (seeded), pretrained on ``data``; with its loss per epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    trunk = build_trunk(name, widths=widths, stage_convs=stage_convs)
    return trunk, pretrain_contrastive(trunk, data, options, patch=patch, seed=seed,
                                       name=name, progress=progress)


def pretrain_contrastive(trunk: Any, data: PreparedSet, options: PretrainOptions, *,
                         patch: int, seed: int, name: str = "trunk",
                         progress: Progress | None = None) -> list[float]:
    """Train ``trunk``'s feature layers in place on view pairs from ``data``'s breasts;
    return the contrastive loss per epoch."""
    import keras

    if options.epochs <= 0:
        return []
    keras.utils.set_random_seed(seed)
    model = _contrastive_model(trunk, patch, options.projection)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate),
                  loss=nt_xent(options.temperature))
    rng = np.random.default_rng(seed)
    dummy = np.zeros((options.pairs_per_epoch, 1), np.float32)
    losses: list[float] = []
    for epoch in range(1, options.epochs + 1):
        first, second = view_pairs(data, options, patch, rng)
        # Shuffled pairs, whole batches only: a short last batch would have few negatives.
        fit = model.fit([first, second], dummy, batch_size=options.batch_size, epochs=1,
                        verbose=0, shuffle=True)
        losses.append(float(fit.history["loss"][0]))
        if progress:
            progress(f"{name} contrastive epoch {epoch}/{options.epochs}: loss "
                     f"{losses[-1]:.3f} ({options.pairs_per_epoch} view pairs)")
    return losses


def view_pairs(data: PreparedSet, options: PretrainOptions, patch: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented views (each (n, patch, patch, 1)) of ``n`` random places in the breasts:
    the same place, seen shifted by up to ``options.shift`` pixels and jittered apart."""
    n = options.pairs_per_epoch
    views = np.empty((2, n, patch, patch, 1), np.float32)
    for k, i in enumerate(rng.integers(0, len(data.images), size=n)):
        x, y = tissue_points(data, int(i), rng, 1)[0]
        for view in views:
            dx, dy = rng.uniform(-options.shift, options.shift, 2)
            view[k, :, :, 0] = augmented_crop(data.pixels[i], x + dx, y + dy, patch, rng,
                                              options.intensity_jitter)
    return views[0], views[1]


def nt_xent(temperature: float) -> Callable[[Any, Any], Any]:
    """SimCLR's normalised-temperature cross-entropy over a batch of pairs. ``y_pred`` holds
    each pair's two projections side by side, (b, 2d); each of the 2b views must pick its
    partner among the other 2b - 1. Per pair: the mean of its two views' losses."""
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        first, second = ops.split(y_pred, 2, axis=-1)
        views = ops.concatenate([first, second], axis=0)
        views = views / ops.maximum(ops.norm(views, axis=-1, keepdims=True), 1e-8)
        b = ops.shape(first)[0]
        similarity = ops.matmul(views, ops.transpose(views)) / temperature
        # A view is not its own negative.
        similarity = similarity - 1e9 * ops.eye(2 * b, dtype=similarity.dtype)
        partner = ops.concatenate([ops.arange(b) + b, ops.arange(b)], axis=0)
        per_view = ops.sparse_categorical_crossentropy(partner, similarity, from_logits=True)
        return (per_view[:b] + per_view[b:]) / 2.0

    return loss


def _contrastive_model(trunk: Any, patch: int, projection: int) -> Any:
    """Both views through the trunk's feature layers (shared weights), pooled, projected:
    outputs (b, 2 * projection)."""
    import keras

    features = trunk.layers[:-2]  # all but the dropout and the 3-class output convolution
    head = [keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(128, activation="relu"), keras.layers.Dense(projection)]

    def embed(inputs: Any) -> Any:
        x = inputs
        for layer in (*features, *head):
            x = layer(x)
        return x

    views = [keras.Input((patch, patch, 1)), keras.Input((patch, patch, 1))]
    return keras.Model(views, keras.layers.Concatenate()([embed(v) for v in views]),
                       name="contrastive")
