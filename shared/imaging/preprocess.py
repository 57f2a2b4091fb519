"""Pure preprocessing steps, one per function, shaped ``(array, ...) -> array``.

The worker calls ``preprocess``; training and evaluation call the same function, so a model
never sees images prepared differently from the ones it learnt on. Every prediction records
``PREPROCESSING_VERSION``: bump it whenever any step's output changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from shared.enums import Laterality
from shared.errors import EmptyImageError, NotAMammogramError, UnreadableImageError
from shared.imaging.segmentation import MASK_SIDE, breast_mask, chest_wall_side, working_copy
from shared.imaging.types import DecodedImage

PREPROCESSING_VERSION = "2"
# Physical pixel size images are brought to when their spacing is known: that of the
# mini-MIAS film scans the shipped model learns from. Finer images are shrunk, none enlarged.
TARGET_SPACING_MM = 0.2

MIN_SIDE = 64
# Below this short side, an image with no pixel spacing is more likely a PACS preview or
# icon than a mammogram (the training scans are 1024 px; detectors give thousands): scored,
# with a note, since a legitimately small scan cannot be told apart from its pixels.
PREVIEW_SIDE = 256
# Detector formats are about 4:3 (18 x 24, 24 x 30 cm), digitised film up to about 2:1; an
# image four times longer than wide is a strip, a scout or a stitched panel, not one view.
MAX_ASPECT = 4.0
# Less contrast than this (on the unit range, about 4 grey levels at 12 bits) is a blank,
# over- or under-exposed frame, not an image worth classifying.
MIN_CONTRAST = 1e-3
# Neighbouring pixels of a mammogram's working copy (MASK_SIDE) correlate at 0.94 or more
# (all 258 mini-MIAS scans, the vendor DICOMs and the CBIS-DDSM films in the tests; the
# mini-MIAS scans shrunk to 64-128 px, with no averaging to hide noise: 0.80-0.92); noise
# is near 0 and a fine test pattern below 0.5 (the MG test-pattern DICOM in ../shared/data:
# 0.46). Below this, the image is refused rather than given a meaningless score.
MIN_NEIGHBOUR_CORRELATION = 0.75
# Distinct grey levels on a sample of about MASK_SIDE pixels a side, taken without averaging
# (an averaged copy invents levels along every edge of a mask): the mammograms in
# ../shared/data and the CBIS-DDSM test films have 195 (8-bit mini-MIAS scans) to 3,164;
# a segmentation or ROI mask, a 1-bit scan or a drawing has 2 to a few.
MIN_GREY_LEVELS = 24
# Margin, in mask pixels (of MASK_SIDE), kept around the breast's bounding box.
_CROP_MARGIN = 2
# Contrast stretch: these percentiles of the breast's intensities become 0 and 1.
_STRETCH_PERCENTILES = (1.0, 99.5)
# Share of the breast's area in the half of its bounding box away from where the header put
# the chest wall. The breast is widest at the chest wall, so correctly oriented images have
# 0.30-0.46 (every mini-MIAS scan and vendor DICOM in ../shared/data; a synthetic half
# ellipse 0.39), and the two mini-MIAS films stored mirrored against the data set's own
# convention 0.51 and 0.53. From this share on, the image contradicts its header for
# certain; between, the image is too unclear to call a header wrong.
MIRRORED_SHARE = 0.55

ChestWallSide = Literal["left", "right"]
# Where stored mammograms have the chest wall: a right breast's on the right.
_STORED_SIDE: dict[Laterality, ChestWallSide] = {Laterality.LEFT: "left",
                                                 Laterality.RIGHT: "right"}

__all__ = [
    "MAX_ASPECT", "MIN_CONTRAST", "MIN_GREY_LEVELS", "MIN_NEIGHBOUR_CORRELATION", "MIN_SIDE",
    "MIRRORED_SHARE", "PREPROCESSING_VERSION", "PREVIEW_SIDE", "TARGET_SPACING_MM",
    "Prepared", "canonical_orientation", "crop_box", "fit_inside", "grey_levels",
    "orientation_notes", "pad_top_left", "preprocess", "preprocess_with_notes",
    "refuse_few_grey_levels", "refuse_noise", "resample_to_spacing", "resize_with_padding",
    "resolution_notes", "stated_chest_wall_side", "stored_chest_wall", "stretch_range",
    "to_unit_range", "validate",
]


def to_unit_range(decoded: DecodedImage) -> np.ndarray:
    """float32 in [0, 1], 1 = bright (dense tissue); MONOCHROME1 images are inverted here."""
    span = decoded.max_value - decoded.min_value
    if not span > 0:
        raise UnreadableImageError(
            f"The decoded {decoded.format} image declares a value range of "
            f"{decoded.min_value} to {decoded.max_value}; nothing can be scaled from it."
        )
    image = decoded.pixels.astype(np.float32)
    if decoded.min_value:
        image -= np.float32(decoded.min_value)
    image /= np.float32(span)
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
    if max(rows, columns) > MAX_ASPECT * min(rows, columns):
        raise NotAMammogramError(
            f"The image is {columns} x {rows} pixels, {max(rows, columns) / min(rows, columns):.1f}"
            f" times longer than wide: a mammogram is at most about 2:1 (the limit here is "
            f"{MAX_ASPECT:g}:1), so this is a strip or a panel of several images."
        )
    if not np.isfinite(image).all():
        raise UnreadableImageError("The decoded image contains non-finite (NaN or infinite) "
                                   "values.")
    if float(image.max()) - float(image.min()) < MIN_CONTRAST:
        raise EmptyImageError(
            f"The image is blank: every pixel has (almost) the value {float(image.min()):.3f}."
        )
    return image


def refuse_noise(work: np.ndarray) -> None:
    """Refuse an image whose neighbouring pixels hardly correlate: noise, not anatomy.

    ``work`` is the working copy (long side at most MASK_SIDE), where anatomy is smooth
    whatever the detector's own noise; the lower of the across and down correlations counts,
    so stripes in either direction are caught.
    """
    correlation = min(_neighbour_correlation(work[:, :-1], work[:, 1:]),
                      _neighbour_correlation(work[:-1, :], work[1:, :]))
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        raise NotAMammogramError(
            f"The image does not look like a mammogram: neighbouring pixels are almost "
            f"unrelated (correlation {correlation:.2f}; mammograms are above 0.9), as in "
            "random noise or a fine test pattern. It is not scored."
        )


def grey_levels(image: np.ndarray) -> int:
    """Distinct values on a sample of about MASK_SIDE pixels a side, taken without averaging.
    Count them before any resampling: interpolation invents levels along every edge, and a
    mask with a detector's pixel spacing came out of it with hundreds."""
    step = max(1, math.ceil(max(image.shape) / MASK_SIDE))
    return int(np.unique(image[::step, ::step]).size)


def refuse_few_grey_levels(levels: int) -> None:
    """Refuse a binary or posterised picture: a radiograph has hundreds of grey levels."""
    if levels < MIN_GREY_LEVELS:
        raise NotAMammogramError(
            f"The image has only {levels} grey level(s) (a mammogram has hundreds): it is a "
            "segmentation or ROI mask, a 1-bit scan or a drawing, not a radiograph. It is "
            "not scored; send the mammogram itself.")


def _neighbour_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    spread = math.sqrt(float(a @ a) * float(b @ b))
    # No variation along this direction at all (a pure gradient the other way): smooth.
    return float(a @ b) / spread if spread > 0 else 1.0


def fit_inside(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to fit inside ``size`` = (height, width), aspect ratio kept."""
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
    return np.asarray(cv2.resize(image, (new_columns, new_rows), interpolation=interpolation))


def pad_top_left(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` in the TOP-LEFT corner of a zero (black, like background) canvas.

    A heatmap maps back to the crop by one division by the scale, with no offset.
    """
    padded = np.zeros(size, dtype=image.dtype)
    padded[:image.shape[0], :image.shape[1]] = image
    return padded


def resize_with_padding(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit ``image`` inside ``size`` = (height, width) keeping its aspect ratio, top-left."""
    return pad_top_left(fit_inside(image, size), size)


def stated_chest_wall_side(decoded: DecodedImage,
                           laterality: Laterality | None) -> ChestWallSide | None:
    """Where the header puts the chest wall in the stored pixels: its Patient Orientation
    (``decoded.chest_wall_side``), else laterality (stored mammograms show a right breast
    with its chest wall on the right); None when neither says."""
    if decoded.chest_wall_side is not None:
        return decoded.chest_wall_side
    return _STORED_SIDE.get(laterality) if laterality is not None else None


def canonical_orientation(image: np.ndarray, decoded: DecodedImage,
                          laterality: Laterality | None) -> np.ndarray:
    """Mirror ``image`` so the chest wall is on the LEFT.

    Only left and right: an image stored upside down was turned by its reader
    (``DecodedImage``), so the PREPROCESSING_VERSION sealed into the models stays valid.

    Evidence, most direct first: the header (``stated_chest_wall_side``), then the image
    itself. Flipping happens before any resampling, so a mirrored input gives bit-identical
    output. The header is followed even where the image disagrees (``orientation_notes``
    says so): the image's own evidence is not sure enough to overrule it.
    """
    return _chest_wall_left(image, stored_chest_wall(image, decoded, laterality)[0])


def _chest_wall_left(image: np.ndarray, side: ChestWallSide) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1]) if side == "right" else image


def stored_chest_wall(image: np.ndarray, decoded: DecodedImage,
                      laterality: Laterality | None) -> tuple[ChestWallSide, bool]:
    """The side ``image`` (as stored) has its chest wall on, and whether the header said
    so (``stated_chest_wall_side``) rather than the breast's shape: the evidence of
    ``canonical_orientation``, kept for the report, which hangs a view of unknown
    laterality the way its file has it."""
    side = stated_chest_wall_side(decoded, laterality)
    if side is not None:
        return side, True
    return chest_wall_side(breast_mask(working_copy(image))), False


def _share_away_from_left(mask: np.ndarray) -> float:
    """Share of the mask's area in the right half of its bounding box (0.5 when empty)."""
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return 0.5
    area = mask[:, columns[0]:columns[-1] + 1].sum(axis=0, dtype=np.int64)
    half = area.size // 2
    left, right = int(area[:half].sum()), int(area[area.size - half:].sum())
    return right / (left + right) if left + right else 0.5


def orientation_notes(decoded: DecodedImage, laterality: Laterality | None,
                      oriented_mask: np.ndarray) -> dict[str, str]:
    """A "laterality" note when the breast, turned as its header says (``oriented_mask``:
    its mask after ``canonical_orientation``, chest wall meant on the left), clearly lies
    the other way round: a left breast labelled R, or a wrong Patient Orientation. The
    image is still scored as the header says; the note asks a person to check."""
    stated = stated_chest_wall_side(decoded, laterality)
    if stated is None or _share_away_from_left(oriented_mask) < MIRRORED_SHARE:
        return {}
    if laterality is not None and _STORED_SIDE.get(laterality) == stated:
        other = Laterality.RIGHT if laterality is Laterality.LEFT else Laterality.LEFT
        return {"laterality": f"header says {laterality}, but the breast lies as in an "
                              f"{other} image: check the laterality; scored as {laterality}"}
    found = "left" if stated == "right" else "right"
    return {"laterality": f"(0020,0020) Patient Orientation puts the chest wall on the "
                          f"{stated}, but the breast lies with it on the {found}: check the "
                          "header; scored as the header has it"}


def resolution_notes(decoded: DecodedImage) -> dict[str, str]:
    """A "low_resolution" note for a small image without a pixel spacing (see
    ``PREVIEW_SIDE``); an image with one is judged by its millimetres instead."""
    rows, columns = decoded.pixels.shape[:2]
    if decoded.pixel_spacing_mm is not None or min(rows, columns) >= PREVIEW_SIDE:
        return {}
    return {"low_resolution": f"only {columns} x {rows} pixels and no pixel spacing: a preview "
                              "or icon rather than the full mammogram? The model enlarges it; "
                              "score the full-resolution image"}


def resample_to_spacing(image: np.ndarray,
                        spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """Shrink to ``TARGET_SPACING_MM`` pixels (never enlarge); square up non-square pixels.

    Every image then carries about as much detail per millimetre as the training film scans
    (mini-MIAS: 200 micron) before the final fit, whatever detector it came from.
    """
    if spacing_mm is None:
        return image
    row_mm, column_mm = spacing_mm
    # A spacing that is not a positive finite number is a header error, not a size: ignored.
    if not (0 < row_mm < math.inf and 0 < column_mm < math.inf):
        return image
    target = max(TARGET_SPACING_MM, row_mm, column_mm)
    rows, columns = image.shape
    new_rows, new_columns = round(rows * row_mm / target), round(columns * column_mm / target)
    if (new_rows, new_columns) == (rows, columns):
        return image
    if min(new_rows, new_columns) < MIN_SIDE:
        # A plausible spacing never shrinks a mammogram this far: either the spacing is
        # wrong (a header written in cm or inches, a manifest typo) or the image is not a
        # breast. Scoring a few dozen pixels would invent a result.
        raise NotAMammogramError(
            f"At its recorded pixel spacing ({row_mm:g} x {column_mm:g} mm) the image covers "
            f"only {rows * row_mm:.1f} x {columns * column_mm:.1f} mm, {new_columns} x "
            f"{new_rows} pixels at {TARGET_SPACING_MM} mm: too small for a mammogram. Check "
            "the pixel spacing in the DICOM header or the manifest."
        )
    resized = cv2.resize(image, (max(1, new_columns), max(1, new_rows)),
                         interpolation=cv2.INTER_AREA)
    return np.asarray(resized, dtype=np.float32)


def crop_box(mask: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The mask's bounding box, plus a small margin, in the coordinates of ``shape``."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    scale_r, scale_c = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
    top = max(0, int(rows[0]) - _CROP_MARGIN)
    bottom = min(mask.shape[0], int(rows[-1]) + 1 + _CROP_MARGIN)
    left = max(0, int(columns[0]) - _CROP_MARGIN)
    right = min(mask.shape[1], int(columns[-1]) + 1 + _CROP_MARGIN)
    return (slice(math.floor(top * scale_r), math.ceil(bottom * scale_r)),
            slice(math.floor(left * scale_c), math.ceil(right * scale_c)))


def stretch_range(work: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(low, high) intensity of the breast: percentiles inside the mask, never of the
    background or the labels, so exposure and film density differences cancel out."""
    inside = work[mask.astype(bool)]
    if inside.size == 0:
        inside = work.ravel()
    low, high = (float(v) for v in np.percentile(inside, _STRETCH_PERCENTILES))
    if high - low < MIN_CONTRAST:
        low, high = float(inside.min()), float(inside.max())
    return low, max(high, low + MIN_CONTRAST)


@dataclass(frozen=True)
class Prepared:
    """The model input and what preprocessing noticed on the way (kind -> sentence)."""

    tensor: np.ndarray
    notes: dict[str, str] = field(default_factory=dict)
    # Where the stored image had its chest wall before it was turned to the left, and
    # whether its header said so (``stored_chest_wall``).
    chest_wall: ChestWallSide = "left"
    chest_wall_stated: bool = False


def preprocess(decoded: DecodedImage, input_size: tuple[int, int], *,
               laterality: Laterality | None = None) -> np.ndarray:
    """Model input: float32, shape (height, width, 1), values in [0, 1]. Deterministic.

    See ``preprocess_with_notes``; training and evaluation need only the tensor."""
    return preprocess_with_notes(decoded, input_size, laterality=laterality).tensor


def preprocess_with_notes(decoded: DecodedImage, input_size: tuple[int, int], *,
                          laterality: Laterality | None = None) -> Prepared:
    """Model input (float32, shape (height, width, 1), values in [0, 1], deterministic)
    and notes on it (``orientation_notes``).

    Steps: unit range (MONOCHROME1 inverted) -> validation -> chest wall to the left ->
    physical pixel size -> breast mask on a small copy -> crop to the breast -> fit inside
    ``input_size`` (aspect kept, top-left, zero padding) -> contrast stretch inside the
    breast, background set to 0.
    """
    image = validate(to_unit_range(decoded))
    side, stated = stored_chest_wall(image, decoded, laterality)
    image = _chest_wall_left(image, side)  # ``canonical_orientation``, its evidence kept
    levels = grey_levels(image)
    image = resample_to_spacing(image, decoded.pixel_spacing_mm)
    work = working_copy(image)
    refuse_noise(work)
    refuse_few_grey_levels(levels)
    mask = breast_mask(work)
    low, high = stretch_range(work, mask)
    rows, columns = crop_box(mask, image.shape)
    fitted = fit_inside(image[rows, columns], input_size)
    small_rows, small_columns = crop_box(mask, mask.shape)
    # The mask is enlarged to exactly the fitted crop; linear interpolation softens its
    # blocky edge (it was computed at MASK_SIDE) into a smooth skin line.
    breast = cv2.resize(mask[small_rows, small_columns].astype(np.float32),
                        (fitted.shape[1], fitted.shape[0]), interpolation=cv2.INTER_LINEAR)
    stretched = np.clip((fitted - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    out = pad_top_left((stretched * breast).astype(np.float32), input_size)
    return Prepared(out[:, :, np.newaxis], {**orientation_notes(decoded, laterality, mask),
                                            **resolution_notes(decoded)}, side, stated)
