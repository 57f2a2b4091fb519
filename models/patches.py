"""Training patches: lesion patches from the annotated circles, normal patches from breast tissue.

Every epoch draws fresh patches (new positions and augmentations) from a seeded generator, so
a run is reproducible and the network never sees the exact same patch twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from models.prepared import PreparedSet
from shared.enums import CLASSES, Label

BREAST_THRESHOLD = 0.08  # unit-range intensity above which a pixel counts as tissue


@dataclass(frozen=True)
class PatchPlan:
    patch: int = 64
    per_circle: int = 16
    weak_per_image: int = 4  # abnormal images without a circle: image label, random tissue
    negatives_ratio: float = 2.0
    augment: bool = True
    intensity_jitter: float = 1.0


def tissue_points(data: PreparedSet, index: int, rng: np.random.Generator,
                  n: int) -> np.ndarray:
    """``n`` random (x, y) inside the breast of image ``index`` (anywhere if none is seen)."""
    rows, cols = data.tissue(index, BREAST_THRESHOLD)
    if rows.size == 0:
        height, width = data.pixels.shape[1:3]
        return np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], axis=1)
    pick = rng.integers(0, rows.size, size=n)
    return np.stack([cols[pick], rows[pick]], axis=1).astype(np.float64)


def _crop(pixels: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """The ``size`` square centred on (x, y); zero (background) beyond the image's edges."""
    out = np.zeros((size, size), np.float32)
    top, left = round(y) - size // 2, round(x) - size // 2
    rows, cols = pixels.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, rows), min(left + size, cols)
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = pixels[r0:r1, c0:c1]
    return out


def _augment(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Orientation (lesions have none), then film-like intensity jitter scaled by ``strength``
    (preprocessing already normalises contrast, so only a little is left to simulate)."""
    out = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    gamma = np.exp(rng.uniform(-0.22, 0.22) * strength)
    out = np.clip(out, 0.0, 1.0) ** gamma
    mean = out.mean()
    out = (out - mean) * (1.0 + rng.uniform(-0.15, 0.15) * strength) + mean
    out = out + rng.uniform(-0.05, 0.05) * strength + rng.normal(0.0, 0.01 * strength, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _scaled_crop(pixels: np.ndarray, x: float, y: float, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    grab = max(8, round(size * rng.uniform(0.85, 1.18)))  # small scale jitter
    crop = _crop(pixels, x, y, grab)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def sample_patches(
    data: PreparedSet, plan: PatchPlan, rng: np.random.Generator,
    hard_negatives: Sequence[tuple[int, float, float]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(patches (n, p, p, 1) float32, class indices (n,)) drawn from ``data``.

    ``hard_negatives`` are (image index, x, y) of normal tissue the model last scored as
    abnormal; they replace part of the random normal patches.
    """
    centres: list[tuple[int, float, float, int]] = []  # (image index, x, y, class)
    for i, (image, circles) in enumerate(zip(data.images, data.circles, strict=True)):
        if image.label is Label.NORMAL:
            continue
        for circle in circles:
            reach = min(max(circle.radius * 0.6, 4.0), plan.patch * 0.4)
            for _ in range(plan.per_circle):
                angle, dist = rng.uniform(0, 2 * np.pi), reach * np.sqrt(rng.random())
                centres.append((i, circle.x + dist * np.cos(angle),
                                circle.y + dist * np.sin(angle), CLASSES.index(circle.severity)))
        if not circles:
            for x, y in tissue_points(data, i, rng, plan.weak_per_image):
                centres.append((i, x, y, image.class_index))
    n_negative = max(8, int(len(centres) * plan.negatives_ratio))
    normal_idx = [i for i, im in enumerate(data.images) if im.label is Label.NORMAL]
    pool = normal_idx or list(range(len(data.images)))
    hard = list(hard_negatives)[: n_negative // 2]
    centres += [(i, x, y, 0) for i, x, y in hard]
    for n, i in enumerate(rng.choice(pool, size=n_negative - len(hard))):
        if n % 4 == 3:  # anywhere, background and film labels included
            x, y = rng.uniform(0, data.pixels.shape[2]), rng.uniform(0, data.pixels.shape[1])
        else:
            x, y = tissue_points(data, int(i), rng, 1)[0]
        centres.append((int(i), x, y, 0))
    patches = np.empty((len(centres), plan.patch, plan.patch, 1), np.float32)
    labels = np.empty(len(centres), np.int64)
    for n, (i, x, y, cls) in enumerate(centres):
        patches[n, :, :, 0] = (
            augmented_crop(data.pixels[i], x, y, plan.patch, rng, plan.intensity_jitter)
            if plan.augment else _crop(data.pixels[i], x, y, plan.patch))
        labels[n] = cls
    return patches, labels


def augmented_crop(pixels: np.ndarray, x: float, y: float, size: int, rng: np.random.Generator,
                   strength: float) -> np.ndarray:
    """The ``size`` patch centred on (x, y) with scale, orientation and intensity jitter."""
    return _augment(_scaled_crop(pixels, x, y, size, rng), rng, strength)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    present = counts > 0
    weights = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}
