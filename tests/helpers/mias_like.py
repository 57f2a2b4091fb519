"""A tiny MIAS-layout folder of SYNTHETIC images: Info.txt + mdbNNN.png, lesions drawn where
their truth rows say (origin bottom-left, as in the real database)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from shared.enums import Laterality
from shared.synthetic import synth_mammogram, write_png

SIZE = (256, 208)  # rows, columns


def write_mias_like(folder: Path, *, pairs: int = 6, seed: int = 3) -> Path:
    """``pairs`` patients (two images each); every other patient, and every sixth from the
    fifth, has a lesion in one breast, alternately benign and malignant (from 6 pairs on,
    two patients of each class: what `mammo train` needs). Returns ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["SYNTHETIC test data in the MIAS layout", ""]
    sick_pairs = [p for p in range(pairs) if p % 2 == 1 or p % 6 == 4]
    for pair in range(pairs):
        for side in (0, 1):
            number = 2 * pair + 1 + side
            ref = f"mdb{number:03d}"
            laterality = Laterality.LEFT if number % 2 == 0 else Laterality.RIGHT
            pixels = synth_mammogram(rng, SIZE, laterality=laterality).astype(np.float32)
            sick = pair in sick_pairs and side == 0
            if sick:
                severity = "M" if sick_pairs.index(pair) % 2 else "B"
                x = int(SIZE[1] * (0.25 if laterality is Laterality.LEFT else 0.75))
                y_top = int(SIZE[0] * rng.uniform(0.4, 0.6))
                radius = 12
                cv2.circle(pixels, (x, y_top), radius, float(pixels.max()), thickness=-1)
                rows.append(f"{ref} G CIRC {severity} {x} {SIZE[0] - y_top} {radius}")
            else:
                rows.append(f"{ref} G NORM")
            write_png(folder / f"{ref}.png", np.clip(pixels, 0, 4095).astype(np.uint16))
    (folder / "Info.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
