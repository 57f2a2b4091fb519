"""Pure preprocessing steps, one per function, shaped ``(array, ...) -> array``.

The worker calls ``preprocess``; training and evaluation call the same function, so a model
never sees images prepared differently from the ones it learnt on. Every prediction records
``PREPROCESSING_VERSION``: bump it whenever any step's output changes.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.enums import Laterality
from shared.errors import EmptyImageError, NotAMammogramError, UnreadableImageError
from shared.imaging.types import DecodedImage

PREPROCESSING_VERSION = "1"

MIN_SIDE = 64
# Less contrast than this (on the unit range, about 4 grey levels at 12 bits) is a blank,
# over- or under-exposed frame, not an image worth classifying.
MIN_CONTRAST = 1e-3

__all__ = [
    "MIN_CONTRAST", "MIN_SIDE", "PREPROCESSING_VERSION", "preprocess", "resize_with_padding",
    "to_unit_range", "validate",
]


def to_unit_range(decoded: DecodedImage) -> np.ndarray:
    """float32 in [0, 1], 1 = bright (dense tissue); MONOCHROME1 images are inverted here."""
    if decoded.max_value <= 0:
        raise UnreadableImageError(
            f"The decoded {decoded.format} image declares a maximum value of "
            f"{decoded.max_value}; nothing can be scaled from it."
        )
    image = decoded.pixels.astype(np.float32) / np.float32(decoded.max_value)
    np.clip(image, 0.0, 1.0, out=image)  # NaN passes through for validate() to report
    if decoded.invert:
        image = np.float32(1.0) - image
    return image


def validate(image: np.ndarray) -> np.ndarray:
    """Refuse what cannot be a mammogram: not 2-D, tiny, non-finite, or blank."""
    if image.ndim != 2:
        raise NotAMammogramError(f"Expected one 2-D grayscale image, got shape {image.shape}.")
    rows, columns = image.shape
    if min(rows, columns) < MIN_SIDE:
        raise NotAMammogramError(
            f"The image is too small to be a mammogram: {columns} x {rows} pixels (each side "
            f"must be at least {MIN_SIDE})."
        )
    if not np.isfinite(image).all():
        raise UnreadableImageError("The decoded image contains non-finite (NaN or infinite) "
                                   "values.")
    if float(image.max()) - float(image.min()) < MIN_CONTRAST:
        raise EmptyImageError(
            f"The image is blank: every pixel has (almost) the value {float(image.min()):.3f}."
        )
    return image


def resize_with_padding(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit ``image`` inside ``size`` = (height, width) keeping its aspect ratio.

    The scaled image sits in the TOP-LEFT corner and the rest is zero (black, like the
    background of a mammogram): a heatmap maps back to the original by one division by the
    scale, with no offset to remember.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"Target size must be positive, got {size}.")
    rows, columns = image.shape[:2]
    scale = min(height / rows, width / columns)
    new_rows = min(height, max(1, round(rows * scale)))
    new_columns = min(width, max(1, round(columns * scale)))
    # INTER_AREA averages when shrinking (no aliasing of fine calcifications into noise);
    # linear when enlarging, since cubic would overshoot outside [0, 1].
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_columns, new_rows), interpolation=interpolation)
    padded = np.zeros((height, width), dtype=image.dtype)
    padded[:new_rows, :new_columns] = resized
    return padded


def preprocess(decoded: DecodedImage, input_size: tuple[int, int], *,
               laterality: Laterality | None = None) -> np.ndarray:
    """Model input: float32, shape (height, width, 1), values in [0, 1]. Deterministic.

    ``laterality`` (from the DICOM header or a manifest) will drive canonical orientation;
    version 1 does not use it yet.
    """
    del laterality
    image = validate(to_unit_range(decoded))
    return resize_with_padding(image, input_size)[:, :, np.newaxis]
