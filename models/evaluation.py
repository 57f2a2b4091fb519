"""``mammo evaluate``: score a labelled set with a model through the serving path.

Images go through the same decode -> preprocess -> ``worker.classifier.Classifier`` path as
the worker, in batches of the classifier's fixed size, so the figures describe what
production would output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.bilateral import apply_partners, bilateral_head, pair_keys, partners
from models.datasets import (
    LabelledImage,
    content_sha256,
    copies_warning,
    data_hash,
    layout_of,
    left_out_warning,
    load_dataset,
    unknown_patients_warning,
)
from models.prepared import PIXEL_DIGEST_VERSIONS, pixel_digests
from models.registry import ModelSpec
from shared.enums import CLASSES
from shared.errors import DatasetError, InputError
from shared.imaging.preprocess import PREPROCESSING_VERSION, preprocess
from shared.imaging.readers import decode
from shared.scoring import label_indices

Progress = Callable[[str], None]


def evaluate(spec: ModelSpec, data_path: Path, *, max_pixels: int, batch_size: int = 8,
             progress: Progress | None = None, bilateral: bool = True,
             warnings: list[str] | None = None,
             unread: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
    """The ``mammo evaluate --format json`` object (PRODUCT.md keys, in that order).

    With ``bilateral`` and a model that has a bilateral head, each image whose partner (the
    patient's other breast, same view) is in the set is read against it, as the exam
    results of the pipeline are. What the figures do not mean (the data is, or overlaps, the
    model's training data) is appended to ``warnings``, and each image that could not be
    read (so is not in the figures) to ``unread`` with the reason: the JSON keys are fixed."""
    from worker.classifier import Classifier

    images = load_dataset(data_path)
    _note(warnings, left_out_warning, images, data_path)
    classifier = Classifier(spec, batch_size=batch_size,
                            preprocessing_version=PREPROCESSING_VERSION)
    classifier.load()
    # Pixels are digested in the versions the model's training images were recorded in
    # (none: nothing to compare them with, nothing hashed).
    versions = _pixel_versions(spec)
    kept: list[LabelledImage] = []
    digests: list[set[str]] = []
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
            _skipped(image, exc.message, progress, unread)
            continue
        kept.append(image)
        digests.append(pixel_digests(decoded.pixels, versions) if versions else set())
        truth.append(image.class_index)
        if len(batch) == batch_size:
            flush()
        if progress and n % 50 == 0:
            progress(f"scored {n}/{len(images)} images")
    flush()
    if not kept:
        raise DatasetError(f"None of the images in {data_path} could be read.")
    # On the images scored: the figures are theirs.
    _note(warnings, unknown_patients_warning, kept, layout_of(data_path))
    _note(warnings, copies_warning, kept)
    _note(warnings, training_overlap, spec, kept, digests)
    probs = np.asarray(rows, dtype=np.float64)
    if bilateral:
        probs = _read_pairs(spec, kept, probs, progress)
    truth_arr = np.asarray(truth, dtype=np.int64)
    # The label the pipeline stores for the same probabilities, which accuracy and the
    # confusion matrix count too.
    labels = label_indices(probs)
    return {
        **metrics.summary(truth_arr, probs),
        "model": {"name": spec.name, "version": spec.version, "sha256": spec.sha256},
        "predictions": [
            {"id": image.id, "truth": image.label.value, "label": CLASSES[int(k)].value,
             "p_normal": float(p[0]), "p_benign": float(p[1]), "p_malignant": float(p[2])}
            for image, p, k in zip(kept, probs, labels, strict=True)],
    }


def _skipped(image: LabelledImage, reason: str, progress: Progress | None,
             unread: list[tuple[Path, str]] | None) -> None:
    if progress:
        progress(f"skipped {image.id}: {reason}")
    if unread is not None:
        unread.append((image.path, reason))


def unread_summary(unread: Sequence[tuple[Path, str]], scored: int, shown: int = 10) -> str:
    """The closing line of an evaluation that could not read ``unread`` (path, reason) of
    its images, ``scored`` others being in the figures."""
    named = "; ".join(f"{path} ({reason.rstrip('.')})" for path, reason in unread[:shown])
    more = f"; and {len(unread) - shown} more, each named above" if len(unread) > shown else ""
    return (f"{len(unread)} of {len(unread) + scored} images could not be read and are not in "
            f"these metrics: {named}{more}. Replace or remove them and evaluate again for "
            "figures on the whole set.")


def _note(warnings: list[str] | None, check: Callable[..., str | None], *args: Any) -> None:
    """Append ``check(*args)``'s warning to ``warnings``, if it is asked for and there is one."""
    if warnings is not None and (warning := check(*args)) is not None:
        warnings.append(warning)


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


VALIDATION_PREDICTIONS = "validation_predictions.json"
# A training image as ``validation_predictions.json`` records it: id, truth, the file's
# sha256 and its pixels' ``pixel_digest`` (None where not recorded).
TrainingImage = tuple[str, str, str | None, str | None]


def _training_images(spec: ModelSpec) -> list[TrainingImage] | None:
    """The training images ``spec`` recorded, or None where it recorded none readable."""
    try:
        rows = json.loads((spec.directory / VALIDATION_PREDICTIONS).read_text(encoding="utf-8"))
        return [(str(r["id"]), str(r["truth"]), r.get("sha256"), r.get("pixels"))
                for r in rows]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _pixel_versions(spec: ModelSpec) -> set[str]:
    """The ``pixel_digest`` versions of ``spec``'s recorded training images that
    ``pixel_digests`` can give."""
    recorded = {str(pixel).split(":", 1)[0] for *_, pixel in _training_images(spec) or []
                if pixel}
    return recorded & set(PIXEL_DIGEST_VERSIONS)


def training_overlap(spec: ModelSpec, images: Sequence[LabelledImage],
                     pixels: Sequence[Collection[str]] | None = None) -> str | None:
    """Why figures on ``images`` are not held-out figures of ``spec``, or None.

    The same data (``training_data.sha256``, hashed as a training run hashes it) is certain.
    Otherwise the model's held-out predictions (its training images,
    ``validation_predictions.json``) name its training images: by their content where a
    training run recorded it (the file's sha256, and the digest of its pixels, which
    ``pixels``, each image's ``pixel_digests`` in the versions recorded, is compared with:
    the same image saved in another format), whatever the image is called here; by name in
    models that recorded none, an image with the id and label of a training image, or with
    its file name (an id's last part, any case) and label where that name is a training
    image's alone (the same images laid out otherwise: ``mdb001`` in a MIAS folder is
    ``benign/mdb001`` in a class folder)."""
    recorded = (spec.metadata.get("training_data") or {}).get("sha256")
    if recorded and data_hash(images) == recorded:
        return (f"these {len(images)} images are the data {spec.name} {spec.version} was "
                "trained on (its training_data sha256): the figures describe how it fits its "
                "own training data, not how it does on new images")
    trained = _training_images(spec)
    if trained is None:
        return None
    where = f"{spec.name} {spec.version}'s training images ({VALIDATION_PREDICTIONS})"
    if any(digest for _, _, digest, _ in trained):
        contents = {d for _, _, file_digest, pixel in trained for d in (file_digest, pixel) if d}
        own: Sequence[Collection[str]] = pixels if pixels is not None else [()] * len(images)
        shared = sum(not contents.isdisjoint(digests) or content_sha256(image.path) in contents
                     for image, digests in zip(images, own, strict=True))
        if not shared:
            return None
        return (f"{shared} of {len(images)} images have the content of one of {where}: "
                "figures on them are not held-out figures")
    names = {(image_id, label) for image_id, label, _, _ in trained}
    counted: dict[str, int] = {}
    for image_id, _, _, _ in trained:
        counted[_file_name(image_id)] = counted.get(_file_name(image_id), 0) + 1
    names |= {(_file_name(image_id), label) for image_id, label, _, _ in trained
              if counted[_file_name(image_id)] == 1}
    shared = sum((image.id, image.label.value) in names
                 or (_file_name(image.id), image.label.value) in names for image in images)
    if not shared:
        return None
    return (f"{shared} of {len(images)} images have the id or file name and label of one of "
            f"{where}: figures on them are not held-out figures")


def _file_name(image_id: str) -> str:
    """An image id's last part, in one case: ``mdb001`` of ``benign/MDB001``."""
    return image_id.rsplit("/", 1)[-1].casefold()
