"""Carry lesion circles from original pixel coordinates into the model's input frame.

``shared.imaging.preprocess`` (version 2) mirrors the image so the chest wall is on the
left, resamples it to the target pixel size, crops it to the breast and fits the crop into
the top-left corner of the input. It does not return that transform, so this module
replays the same geometric steps with the same functions on the same image: patch labels
stay right whenever the steps are reused unchanged (tests/unit/test_model_roi_mapping.py
checks a drawn disc lands where its mapped circle says).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.datasets import LabelledImage
from shared.enums import Label
from shared.imaging import preprocess as pp
from shared.imaging.segmentation import breast_mask, working_copy
from shared.imaging.types import DecodedImage

SUPPORTED_VERSIONS = ("2",)


@dataclass(frozen=True)
class InputCircle:
    x: float  # column in the input frame
    y: float  # row in the input frame
    radius: float
    severity: Label


@dataclass(frozen=True)
class InputGeometry:
    """x_in = (x' * sx - left) * fit, y_in = (y * sy - top) * fit, x' mirrored if flipped."""

    flipped: bool
    columns: int
    sx: float
    sy: float
    left: int
    top: int
    fit: float

    def circle(self, x: float, y: float, radius: float, severity: Label) -> InputCircle:
        if self.flipped:
            x = self.columns - 1 - x
        return InputCircle((x * self.sx - self.left) * self.fit,
                           (y * self.sy - self.top) * self.fit,
                           radius * (self.sx + self.sy) / 2 * self.fit, severity)


def input_geometry(decoded: DecodedImage, image: LabelledImage,
                   input_size: tuple[int, int]) -> InputGeometry:
    if pp.PREPROCESSING_VERSION not in SUPPORTED_VERSIONS:
        raise RuntimeError(
            f"models.roi_mapping replays preprocessing version(s) {SUPPORTED_VERSIONS}, but "
            f"the code is at version {pp.PREPROCESSING_VERSION}: update it with the steps.")
    unit = pp.validate(pp.to_unit_range(decoded))
    oriented = pp.canonical_orientation(unit, decoded, image.laterality)
    resampled = pp.resample_to_spacing(oriented, decoded.pixel_spacing_mm)
    rows, columns = unit.shape
    new_rows, new_columns = resampled.shape
    mask = breast_mask(working_copy(resampled))
    row_slice, column_slice = pp.crop_box(mask, resampled.shape)
    crop = resampled[row_slice, column_slice]
    fitted = pp.fit_inside(crop, input_size)
    return InputGeometry(
        flipped=oriented is not unit, columns=columns,
        sx=new_columns / columns, sy=new_rows / rows,
        left=int(column_slice.start or 0), top=int(row_slice.start or 0),
        fit=fitted.shape[1] / crop.shape[1],
    )


def circles_in_input(image: LabelledImage, decoded: DecodedImage,
                     input_size: tuple[int, int]) -> list[InputCircle]:
    if not image.rois:
        return []
    geometry = input_geometry(decoded, image, input_size)
    return [geometry.circle(r.x, r.y, r.radius, r.severity) for r in image.rois]
