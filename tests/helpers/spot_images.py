"""Tiny prepared sets for model unit tests: half-disc breasts with textured tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.prepared import PreparedSet

SIZE = 128


def spot_images(n: int, seed: int, tmp_path: Path, *, circles: bool = False) -> PreparedSet:
    """Half-disc breasts with textured tissue; every other one carries a bright spot at a
    random place (abnormal, benign or malignant), the others none (normal). ``circles``:
    each spot is annotated, as the lesion circles of mini-MIAS are."""
    from models.datasets import LabelledImage
    from models.roi_mapping import InputCircle
    from shared.enums import Label

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    pixels, images, annotated = [], [], []
    for k in range(n):
        image = np.zeros((SIZE, SIZE), np.float32)
        breast = (rows - SIZE / 2) ** 2 + cols**2 < (0.45 * SIZE) ** 2
        image[breast] = 0.4 + 0.1 * rng.random(int(breast.sum()))
        label = Label.NORMAL if k % 2 == 0 else (Label.BENIGN, Label.MALIGNANT)[k // 2 % 2]
        if label is not Label.NORMAL:
            y, x = rng.integers(30, 98), rng.integers(8, 40)
            image[(rows - y) ** 2 + (cols - x) ** 2 < 36] = 0.95
        annotated.append([InputCircle(float(x), float(y), 8.0, label)]
                         if circles and label is not Label.NORMAL else [])
        pixels.append(image)
        images.append(LabelledImage(f"i{k}", tmp_path / f"i{k}.png", label, f"p{k}"))
    return PreparedSet(images, np.stack(pixels).astype(np.float16), annotated, [])
