"""Decode and preprocess a labelled set once, through the same code the worker uses.

Lesion circles are carried into the model's input frame by ``models.roi_mapping``, so patch
labels follow whatever geometry the shared preprocessing applies.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Sequence
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
# px1 hashed float arrays as float64 and integer arrays as integers, so the DICOM reader's
# float32 output of a 16-bit image and the same values in a 16-bit PNG digested apart and
# `mammo evaluate` missed a model's training images saved in the other container. px2 hashes
# integral values as integers whatever the array's type.
PIXEL_DIGEST_VERSION = "px2"
# The versions ``pixel_digests`` can give: a model's recorded digests in others match nothing.
PIXEL_DIGEST_VERSIONS = (PIXEL_DIGEST_VERSION, "px1")
# Past this a float64 no longer holds every integer: such values are hashed as floats.
_EXACT_INTEGERS = 2.0 ** 53


def pixel_digest(pixels: np.ndarray) -> str:
    """``px2:<sha256>`` of decoded pixels as stored (``DecodedImage.pixels``): their shape
    and values, whatever file format held them, so an image saved again in another format
    without loss (a PGM as a PNG, 8 bits in a 16-bit file, a DICOM's pixels as a 16-bit PNG)
    has the digest of the original. Integral values, in an integer or a float array, are
    hashed in the narrowest of 8 or 16 unsigned bits that holds them (64-bit signed past
    those), others as float64, little endian."""
    return f"{PIXEL_DIGEST_VERSION}:{_sha256(_integral(np.asarray(pixels)))}"


def pixel_digests(pixels: np.ndarray, versions: Collection[str]) -> set[str]:
    """Every digest in ``versions`` that an image with these pixels may have been recorded
    under: a model trained before px2 recorded px1, which hashed a DICOM's (float) pixels as
    float64 and a PNG's as integers, so both px1 forms of the values are given."""
    values = np.asarray(pixels)
    integral = _integral(values)
    found: set[str] = set()
    if PIXEL_DIGEST_VERSION in versions:
        found.add(f"{PIXEL_DIGEST_VERSION}:{_sha256(integral)}")
    if "px1" in versions:
        found.add(f"px1:{_sha256(integral)}")
        if integral.dtype.kind in "iub":  # the same values decoded into a float array
            found.add(f"px1:{_sha256(values.astype('<f8'))}")
    return found


def _integral(values: np.ndarray) -> np.ndarray:
    """``values`` in the type its digest hashes (``pixel_digest``)."""
    if values.dtype.kind == "f" and values.size:
        finite = bool(np.isfinite(values).all())
        if finite and float(np.abs(values).max()) <= _EXACT_INTEGERS and bool(
                (values == np.floor(values)).all()):
            values = values.astype(np.int64)
    if values.dtype.kind in "iub" and values.size:
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 0xFF:
            return values.astype(np.uint8)
        if low >= 0 and high <= 0xFFFF:
            return values.astype("<u2")
        return values.astype("<i8")
    return values.astype("<f8")


def _sha256(values: np.ndarray) -> str:
    digest = hashlib.sha256(f"{values.shape}|{values.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(values).data)
    return digest.hexdigest()
