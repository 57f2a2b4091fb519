"""``mammo evaluate``: score a labelled set with a model through the serving path.

Images go through the same decode -> preprocess -> ``worker.classifier.Classifier`` path as
the worker, in batches of the classifier's fixed size, so the figures describe what
production would output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.bilateral import apply_partners, bilateral_head, pair_keys, partners
from models.datasets import LabelledImage, load_dataset
from models.registry import ModelSpec
from shared.enums import CLASSES
from shared.errors import DatasetError, InputError
from shared.imaging.preprocess import PREPROCESSING_VERSION, preprocess
from shared.imaging.readers import decode

Progress = Callable[[str], None]


def evaluate(spec: ModelSpec, data_path: Path, *, max_pixels: int, batch_size: int = 8,
             progress: Progress | None = None, bilateral: bool = True) -> dict[str, Any]:
    """The ``mammo evaluate --format json`` object (PRODUCT.md keys, in that order).

    With ``bilateral`` and a model that has a bilateral head, each image whose partner (the
    patient's other breast, same view) is in the set is read against it, as the exam
    results of the pipeline are."""
    from worker.classifier import Classifier

    images = load_dataset(data_path)
    classifier = Classifier(spec, batch_size=batch_size,
                            preprocessing_version=PREPROCESSING_VERSION)
    classifier.load()
    kept: list[LabelledImage] = []
    truth: list[int] = []
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            rows.extend(classifier.predict(np.stack(batch)).probabilities)
            batch.clear()

    for n, image in enumerate(images, start=1):
        try:
            decoded = decode(image.path, max_pixels=max_pixels)
            batch.append(preprocess(decoded, spec.input_size, laterality=image.laterality))
        except InputError as exc:
            if progress:
                progress(f"skipped {image.id}: {exc.message}")
            continue
        kept.append(image)
        truth.append(image.class_index)
        if len(batch) == batch_size:
            flush()
        if progress and n % 50 == 0:
            progress(f"scored {n}/{len(images)} images")
    flush()
    if not kept:
        raise DatasetError(f"None of the images in {data_path} could be read.")
    probs = np.asarray(rows, dtype=np.float64)
    if bilateral:
        probs = _read_pairs(spec, kept, probs, progress)
    truth_arr = np.asarray(truth, dtype=np.int64)
    return {
        **metrics.summary(truth_arr, probs),
        "model": {"name": spec.name, "version": spec.version, "sha256": spec.sha256},
        "predictions": [
            {"id": image.id, "truth": image.label.value, "label": CLASSES[int(p.argmax())].value,
             "p_normal": float(p[0]), "p_benign": float(p[1]), "p_malignant": float(p[2])}
            for image, p in zip(kept, probs, strict=True)],
    }


def _read_pairs(spec: ModelSpec, images: list[LabelledImage], probs: np.ndarray,
                progress: Progress | None) -> np.ndarray:
    head = bilateral_head(spec.metadata)
    if head is None:
        return probs
    partner = partners(pair_keys(images))
    if progress:
        progress(f"{int((partner >= 0).sum())} of {len(images)} images read against the "
                 f"other breast ({', '.join(head.scores)})")
    return apply_partners(probs, partner, head)
