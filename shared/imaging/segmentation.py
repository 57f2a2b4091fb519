"""Where the breast is, and on which side its chest wall lies, from a small working copy.

Everything here runs on an image whose long side is ``MASK_SIDE`` pixels (a 4096 x 3328
mammogram and a 1024 x 1024 film scan cost the same), values in [0, 1], bright = tissue.
The mask must survive what real files carry besides the breast:

* background that is not exactly 0 (film base, detector offset): the threshold sits halfway
  between the background level and Otsu's tissue/background split, not at a fixed value;
* burned-in labels and markers in the corners: they are separate blobs, and only the largest
  connected component is kept;
* bright film edges of digitised film: thin strips are erased by a morphological opening
  wider than they are, and a full-width band at the top or bottom is dropped;
* a film scanned with clear (white) film all round it: edge rows and columns that are near
  white almost throughout are background, and the mask is computed inside them;
* data using a small part of their container (10-bit values in a 16-bit PNG or TIFF): the
  mask is computed on the working copy stretched to its own range.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

MASK_SIDE = 256
# Opening kernel at MASK_SIDE: wider than film-edge strips and marker strokes (about 2% of
# the side), far narrower than any breast.
_OPEN_KERNEL = 9
# A mask row this full, this close to the top or bottom, is a film edge, not tissue.
_BAND_FILL = 0.97
_BAND_DEPTH = 0.06
# An edge row or column of the working copy with this share of its pixels within
# _FRAME_LEVEL of the image's maximum is a clear-film frame: on every real mammogram in
# ../shared/data and the CBIS-DDSM test films no outermost line has more than 18 %.
_FRAME_FILL = 0.9
_FRAME_LEVEL = 0.05
_FRAME_SIDES = 2  # outermost lines that must be such for a frame (see _inside_bright_frame)
# A working copy spanning less of the unit range than this is stretched to its own range
# before the mask is computed. Below it every pixel lies within _FRAME_LEVEL of the maximum
# (a frame on all four sides, peeled to the central quarter) and the 8-bit levels Otsu
# sees are a handful: 10-bit data in a 16-bit container span 0.016, 11-bit 0.031. 12-bit
# data (up to 0.0625) and every real image in ../shared/data span more and keep the mask,
# and so the model input, they had when the shipped model was trained.
_FAINT_SPAN = _FRAME_LEVEL

__all__ = ["MASK_SIDE", "breast_mask", "chest_wall_side", "working_copy"]


def working_copy(image: np.ndarray) -> np.ndarray:
    """``image`` shrunk (area-averaged) so its long side is at most ``MASK_SIDE``."""
    rows, columns = image.shape
    scale = MASK_SIDE / max(rows, columns)
    if scale >= 1:
        return image
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.float32)


def breast_mask(work: np.ndarray) -> np.ndarray:
    """uint8 mask (1 = breast) of the largest bright region of ``work``, holes filled.

    A clear-film frame around the image is background, never breast. Falls back to the
    whole image inside it when nothing stands out, so a strange image is still classified
    rather than refused here (validation has already refused blank ones).
    """
    work = _stretched_if_faint(work)
    rows, columns = _inside_bright_frame(work)
    if (rows, columns) == (slice(0, work.shape[0]), slice(0, work.shape[1])):
        return _mask_of(work)
    mask = np.zeros(work.shape, np.uint8)
    mask[rows, columns] = _mask_of(work[rows, columns])
    return mask


def _stretched_if_faint(work: np.ndarray) -> np.ndarray:
    """``work`` stretched to [0, 1] when it spans less than ``_FAINT_SPAN``, else itself."""
    low, high = float(work.min()), float(work.max())
    if not 0 < high - low < _FAINT_SPAN:  # a blank copy has nothing to stretch
        return work
    return np.asarray(cv2.normalize(work, None, 0.0, 1.0, cv2.NORM_MINMAX, dtype=cv2.CV_32F))


def _mask_of(work: np.ndarray) -> np.ndarray:
    grey = np.rint(np.clip(work, 0.0, 1.0) * 255).astype(np.uint8)
    otsu, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    below = grey[grey <= otsu]
    background = float(np.median(below)) if below.size else 0.0
    # Halfway between background and Otsu's split keeps the faint fatty skin edge that Otsu
    # alone cuts off, while staying clear of the background's noise.
    threshold = background + (otsu - background) / 2
    mask = (grey > threshold).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_OPEN_KERNEL, _OPEN_KERNEL))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    _drop_film_bands(mask)
    mask = _largest_component(mask)
    if not mask.any():
        return np.ones_like(grey)
    return _fill_holes(mask)


def chest_wall_side(mask: np.ndarray) -> Literal["left", "right"]:
    """The side where the breast is widest: it is cut off there by the image edge.

    Compares the mask area of the two halves of its bounding box. Area, not intensity: dense
    tissue often sits towards the nipple (on mini-MIAS, intensity got 3 of 258 images wrong,
    area 2, both of them film scans stored mirrored against the data set's own convention).
    A tie (a symmetric blob) says left, so a left-oriented image is never flipped for nothing.
    """
    columns = np.flatnonzero(mask.any(axis=0))
    first, last = int(columns[0]), int(columns[-1]) + 1
    area = mask[:, first:last].sum(axis=0, dtype=np.int64)
    half = (last - first) // 2
    left, right = int(area[:half].sum()), int(area[last - first - half:].sum())
    return "right" if right > left else "left"


def _inside_bright_frame(work: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns inside a frame of near-white edge lines (all of ``work`` if none).

    A frame runs along at least two sides: two of the four outermost lines must be near
    white. A breast against the chest-wall edge, saturated by a narrow window, makes one
    such line (it narrows towards the nipple, so never a second), and was peeled away as a
    frame. Then peeled one line at a time from each side, so a frame of unequal width is
    found. At least a quarter of each side is kept.
    """
    bright = work >= float(work.max()) - _FRAME_LEVEL
    edges = (bright[0], bright[-1], bright[:, 0], bright[:, -1])
    if sum(bool(edge.mean() >= _FRAME_FILL) for edge in edges) < _FRAME_SIDES:
        return slice(0, work.shape[0]), slice(0, work.shape[1])
    top, bottom, left, right = 0, work.shape[0], 0, work.shape[1]
    min_rows, min_columns = max(1, bottom // 4), max(1, right // 4)
    peeled = True
    while peeled:
        peeled = False
        if bottom - top > min_rows and bright[top, left:right].mean() >= _FRAME_FILL:
            top, peeled = top + 1, True
        if bottom - top > min_rows and bright[bottom - 1, left:right].mean() >= _FRAME_FILL:
            bottom, peeled = bottom - 1, True
        if right - left > min_columns and bright[top:bottom, left].mean() >= _FRAME_FILL:
            left, peeled = left + 1, True
        if right - left > min_columns and bright[top:bottom, right - 1].mean() >= _FRAME_FILL:
            right, peeled = right - 1, True
    return slice(top, bottom), slice(left, right)


def _drop_film_bands(mask: np.ndarray) -> None:
    rows, columns = mask.shape
    depth = max(1, round(rows * _BAND_DEPTH))
    full = mask.sum(axis=1) >= _BAND_FILL * columns
    for band in (slice(0, depth), slice(rows - depth, rows)):
        mask[band][full[band]] = 0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros_like(mask)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # Dark fat inside the breast falls below the threshold; it is still breast.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled
