"""Heatmaps: where the model looked, stored compactly and measured against the lesion circles.

A heatmap is the model's per-location P(abnormal) map, in the model's input frame: location
(i, j) scores the patch-sized window whose top-left input pixel is (STRIDE*i, STRIDE*j).
It is stored as an 8-bit grayscale PNG (a few hundred bytes), value = round(255 * p).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.architecture import STRIDE
from models.roi_mapping import InputCircle


def encode_png(heatmap: np.ndarray) -> bytes:
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is 2-D; got shape {heatmap.shape}")
    scaled = np.rint(np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", scaled)
    if not ok:
        raise ValueError("OpenCV could not encode the heatmap as PNG")
    return bytes(buffer)


def decode_png(blob: bytes) -> np.ndarray:
    """The stored heatmap as float32 in [0, 1]."""
    array = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise ValueError("not a PNG heatmap")
    return array.astype(np.float32) / 255.0


def location_centres(shape: tuple[int, int], patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Input-frame (x, y) of the centre of every map location, as two (gh, gw) arrays."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return cols * STRIDE + patch / 2.0, rows * STRIDE + patch / 2.0


def peak_location(heatmap: np.ndarray, patch: int) -> tuple[float, float]:
    i, j = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return j * STRIDE + patch / 2.0, i * STRIDE + patch / 2.0


def peak_inside(heatmap: np.ndarray, circles: Sequence[InputCircle], patch: int) -> bool:
    """Whether the heatmap's strongest location lies inside any annotated circle."""
    x, y = peak_location(heatmap, patch)
    # A location is a window of STRIDE pixels: a circle smaller than that can still hold it.
    slack = STRIDE / 2.0
    return any((x - c.x) ** 2 + (y - c.y) ** 2 <= (c.radius + slack) ** 2 for c in circles)


def localisation_rate(heatmaps: Sequence[np.ndarray], circles: Sequence[Sequence[InputCircle]],
                      patch: int) -> tuple[float, int]:
    """(fraction of images with circles whose peak is inside one, number of such images)."""
    scored = [peak_inside(h, c, patch) for h, c in zip(heatmaps, circles, strict=True) if c]
    return (float(np.mean(scored)) if scored else float("nan")), len(scored)


def hard_negative_points(heatmap: np.ndarray, circles: Sequence[InputCircle], patch: int,
                         n: int) -> list[tuple[float, float]]:
    """The ``n`` highest-scoring locations away from every circle: mistakes worth relearning."""
    xs, ys = location_centres(heatmap.shape, patch)
    score = heatmap.astype(np.float64).copy()
    for c in circles:
        score[(xs - c.x) ** 2 + (ys - c.y) ** 2 <= (c.radius + patch / 2.0) ** 2] = -1.0
    order = np.argsort(score, axis=None)[::-1][:n]
    return [(float(xs.flat[k]), float(ys.flat[k])) for k in order if score.flat[k] >= 0]


def peak_distance_ratio(heatmap: np.ndarray, circles: Sequence[InputCircle],
                        patch: int) -> float:
    """Distance from the peak to the nearest circle centre, in that circle's radii."""
    x, y = peak_location(heatmap, patch)
    return min(float(np.hypot(x - c.x, y - c.y)) / max(c.radius, STRIDE / 2.0) for c in circles)
