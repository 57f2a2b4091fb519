"""Decode and preprocess a labelled set once, through the same code the worker uses.

Lesion circles are carried into the model's input frame by ``models.roi_mapping``, so patch
labels follow whatever geometry the shared preprocessing applies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.datasets import LabelledImage
from models.roi_mapping import InputCircle, circles_in_input
from shared.errors import DatasetError, InputError
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class PreparedSet:
    images: list[LabelledImage]
    pixels: np.ndarray  # (n, h, w) float16 in [0, 1]: the model input, minus the channel axis
    circles: list[list[InputCircle]]
    skipped: list[tuple[str, str]]

    _tissue: list[tuple[np.ndarray, np.ndarray]] | None = None
    # ``pixel_digest`` of each image's decoded pixels (empty where not taken).
    digests: list[str] = field(default_factory=list)

    def tissue(self, index: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the pixels brighter than ``threshold`` in image ``index``, cached."""
        if self._tissue is None:
            self._tissue = []
            for p in self.pixels:
                rows, cols = np.nonzero(p > threshold)
                self._tissue.append((rows, cols))
        return self._tissue[index]

    @property
    def labels(self) -> np.ndarray:
        return np.array([i.class_index for i in self.images], dtype=np.int64)

    @property
    def patients(self) -> np.ndarray:
        return np.array([i.patient_id for i in self.images])

    def with_pixels(self, pixels: np.ndarray, threshold: float) -> PreparedSet:
        """The same images seen through a pixel transform: patches are cut from ``pixels``,
        while tissue (where patches may be drawn) is still judged on the original."""
        if pixels.shape != self.pixels.shape:
            raise ValueError(f"pixels {pixels.shape} do not match the set's {self.pixels.shape}")
        tissue = [self.tissue(i, threshold) for i in range(len(self.images))]
        seen = PreparedSet(self.images, pixels, self.circles, self.skipped,
                           digests=self.digests)
        seen._tissue = tissue
        return seen

    def subset(self, index: Sequence[int] | np.ndarray) -> PreparedSet:
        idx = [int(i) for i in index]
        part = PreparedSet([self.images[i] for i in idx], self.pixels[idx],
                           [self.circles[i] for i in idx], [],
                           digests=[self.digests[i] for i in idx] if self.digests else [])
        if self._tissue is not None:  # judged on the original pixels (``with_pixels``)
            part._tissue = [self._tissue[i] for i in idx]
        return part


def prepare(images: Sequence[LabelledImage], input_size: tuple[int, int], *, max_pixels: int,
            progress: Progress | None = None) -> PreparedSet:
    kept: list[LabelledImage] = []
    arrays: list[np.ndarray] = []
    circles: list[list[InputCircle]] = []
    skipped: list[tuple[str, str]] = []
    digests: list[str] = []
    for n, image in enumerate(images, start=1):
        try:
            decoded = decode(image.path, max_pixels=max_pixels)
            tensor = preprocess(decoded, input_size, laterality=image.laterality)
        except InputError as exc:  # one unreadable file never stops training
            skipped.append((image.id, exc.message))
            continue
        kept.append(image)
        arrays.append(tensor[:, :, 0].astype(np.float16))
        digests.append(pixel_digest(decoded.pixels))
        circles.append(circles_in_input(image, decoded, input_size))
        if progress and n % 50 == 0 and n < len(images):
            progress(f"preprocessing: {n} of {len(images)} images read"
                     + (f", {len(skipped)} of them unreadable" if skipped else ""))
    for image_id, message in skipped:  # before any refusal that points at them
        log.warning("skipped %s: %s", image_id, message)
    if not kept:
        first = f" (the first, {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DatasetError(f"None of the {len(images)} images could be read{first}; every "
                           "reason is in the warnings above.")
    if progress:  # the count of what was preprocessed, never of what was only attempted
        progress(f"preprocessed {len(kept)}/{len(images)} images" + (
            f"; {len(skipped)} could not be read and {'is' if len(skipped) == 1 else 'are'} "
            "left out (the warnings above say why)" if skipped else ""))
    return PreparedSet(kept, np.stack(arrays), circles, skipped, digests=digests)


# Bumped when what is hashed changes: digests of two versions are not compared.
PIXEL_DIGEST_VERSION = "px1"


def pixel_digest(pixels: np.ndarray) -> str:
    """``px1:<sha256>`` of decoded pixels as stored (``DecodedImage.pixels``): their shape
    and values, whatever file format held them, so an image saved again in another format
    without loss (a PGM as a PNG, 8 bits in a 16-bit file) has the digest of the original.
    Integer values are hashed in the narrowest of 8 or 16 unsigned bits that holds them,
    little endian."""
    values = np.asarray(pixels)
    if values.dtype.kind in "iub" and values.size:
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 0xFF:
            values = values.astype(np.uint8)
        elif low >= 0 and high <= 0xFFFF:
            values = values.astype("<u2")
        else:
            values = values.astype("<i8")
    else:
        values = values.astype("<f8")
    digest = hashlib.sha256(f"{values.shape}|{values.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(values).data)
    return f"{PIXEL_DIGEST_VERSION}:{digest.hexdigest()}"
