"""Per-view thumbnails for the exam report: the frame the model saw, with its heatmap on top,
hung as a reader hangs it.

The heatmap is stored in the model's input frame, so the image under it must be that frame
too: the source file is decoded again and run through the same ``preprocess`` the worker
used (same spacing fallback, same laterality). When the source can no longer be read, or
the file now at its path is not the image that was scored (scanners reuse file names; a
watched folder keeps the original path), the heatmap is drawn alone and the caption says
why the image is not shown.

The model sees every view with its chest wall on the left; a reader hangs a right breast
with its chest wall on the right (``hanging``). The finished picture, image and heatmap
blended, is mirrored as a whole, so the two cannot part; the model's input is untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.architecture import STRIDE
from models.heatmaps import decode_png
from shared.enums import Laterality
from shared.errors import InputError
from shared.imaging.identity import file_has_identity
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.preprocess import ChestWallSide

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256
_ALPHA = 0.45  # heatmap opacity where the model's P(abnormal) is highest
# JPEG, not PNG: reportlab stores a PNG's pixels re-deflated and ASCII85-encoded in pure
# Python (0.2 s and 130 KB a view), a JPEG's bytes as they are. Quality 90 with full-size
# colour (4:4:4, no chroma halving) keeps the heatmap's colour edges where they were drawn.
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 90,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


UNREADABLE = "source file unreadable"
REPLACED = "the file at its path is no longer the image that was scored"
GONE = "the file is no longer at its path (moved or deleted)"

# What placed the chest wall of a view of unknown laterality (``Hanging.found_by``).
FOUND_BY_HEADER = "where its Patient Orientation puts it"
FOUND_BY_GUESS = "where the automatic chest-wall guess found it in the file"
# No file to look at (heatmap only): drawn as the model saw it.
AS_THE_MODEL_SAW_IT = "as the model saw it (the file cannot be read to tell its side)"


@dataclass(frozen=True)
class Hanging:
    """Where the picture shows the chest wall, and, for a view of unknown laterality, what
    put it there (None: the view's own laterality)."""

    chest_wall: ChestWallSide
    found_by: str | None = None


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    image_missing: str | None  # why the image is not drawn (None: it is)
    heatmap_available: bool
    hanging: Hanging

    @property
    def image_available(self) -> bool:
        return self.image_missing is None


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray | None  # the preprocessed image (input_size, values 0-1)
    missing: str | None = None  # why ``pixels`` is None
    # Where the file has the chest wall, and whether its header said so (``ModelInput``).
    chest_wall: ChestWallSide = "left"
    chest_wall_stated: bool = False


def model_frame(source: ModelInputSource, identity: str | None = None, *,
                image_id: int | None = None) -> Frame:
    """The frame the model saw, rebuilt from the source file.

    ``identity`` is the image's stored identity (SOP Instance UID or file sha256): when the
    file now at the path has another, it is not drawn. ``image_id`` names the image in the
    log: never its file name, which can hold the patient's name (no PHI in log lines) or a
    line break that forges a log line.
    """
    image = f"image {image_id}" if image_id is not None else "an image"
    try:
        # Inside the try: on Python 3.11 exists() raises for a copy it cannot stat (EACCES
        # on its folder, ESTALE or EIO on a share), and that one view failed the whole report.
        if not Path(source.path).exists():
            log.warning("%s not drawn in the report: %s", image, GONE)
            return Frame(None, GONE)
        if identity is not None and not file_has_identity(Path(source.path), identity):
            log.warning("%s not drawn in the report: %s", image, REPLACED)
            return Frame(None, REPLACED)
        rebuilt = load_model_input(source)
    except (InputError, OSError) as exc:
        log.info("%s not available for the report: %s", image, type(exc).__name__)
        return Frame(None, UNREADABLE)
    return Frame(np.asarray(rebuilt.tensor[:, :, 0], dtype=np.float32), None,
                 rebuilt.chest_wall, rebuilt.chest_wall_stated)


def heatmap_in_frame(blob: bytes, input_size: tuple[int, int], patch: int | None,
                     stride: int | None = None) -> np.ndarray:
    """The stored map resampled onto the input frame.

    Patch models score the window whose top-left input pixel is (stride*i, stride*j), so a
    location covers ``stride`` pixels around the window's centre; other models' maps
    (Grad-CAM) span the whole frame evenly. ``stride``: the model metadata's
    ``heatmap_stride``; None (a model that does not state it) is the shipped architecture's.
    """
    heatmap = decode_png(blob)
    height, width = input_size
    if patch is None:
        return np.asarray(cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR))
    # A model of another stride looked elsewhere: at STRIDE its map lands off the lesion.
    step = stride if stride is not None and stride > 0 else STRIDE
    cells = cv2.resize(heatmap, (heatmap.shape[1] * step, heatmap.shape[0] * step),
                       interpolation=cv2.INTER_LINEAR)
    placed = np.zeros((height, width), dtype=np.float32)
    offset = max(0, (patch - step) // 2)
    rows, cols = min(height - offset, cells.shape[0]), min(width - offset, cells.shape[1])
    placed[offset:offset + rows, offset:offset + cols] = cells[:rows, :cols]
    return placed


def overlay(frame: np.ndarray | None, heat: np.ndarray | None) -> np.ndarray:
    """An RGB uint8 picture: grey image, heatmap as a JET colour blended by its strength."""
    base = frame if frame is not None else np.zeros_like(heat) if heat is not None else None
    if base is None:
        raise ValueError("neither an image nor a heatmap to draw")
    grey = np.clip(base * 255, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB).astype(np.float32)
    if heat is not None:
        if frame is not None:
            # Only inside the breast: the background and padding carry no tissue to read.
            heat = np.where(frame > 0, heat, 0.0).astype(np.float32)
        colour = cv2.cvtColor(cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8),
                                                cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        alpha = (_ALPHA * heat)[:, :, np.newaxis]
        rgb = rgb * (1 - alpha) + colour.astype(np.float32) * alpha
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _crop_to_content(picture: np.ndarray, frame: np.ndarray | None) -> np.ndarray:
    """Drop the zero padding ``preprocess`` added right and below the fitted breast."""
    if frame is None or not (frame > 0).any():
        return picture
    rows = np.flatnonzero((frame > 0).any(axis=1))
    cols = np.flatnonzero((frame > 0).any(axis=0))
    return picture[:rows[-1] + 1, :cols[-1] + 1]


def _to_side(plane: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """``plane`` resized to ``size`` (width, height), averaging what it drops."""
    if plane is None:
        return None
    return np.asarray(cv2.resize(plane, size, interpolation=cv2.INTER_AREA), dtype=np.float32)


def hanging(source: ModelInputSource, frame: Frame) -> Hanging:
    """How the view is hung: a right breast with its chest wall on the right, a left one on
    the left (as a reader hangs them: chest walls back to back). A view of unknown laterality
    keeps the side its file has, as preprocessing found it (``Frame.chest_wall``: the
    header's Patient Orientation, else the breast's shape), and says what found it, so no
    one takes it for a known side; with no file to look at, the model's own (left)."""
    laterality = Laterality.parse(source.laterality)
    if laterality is Laterality.RIGHT:
        return Hanging("right")
    if laterality is Laterality.LEFT:
        return Hanging("left")
    if frame.pixels is None:
        return Hanging("left", AS_THE_MODEL_SAW_IT)
    return Hanging(frame.chest_wall,
                   FOUND_BY_HEADER if frame.chest_wall_stated else FOUND_BY_GUESS)


def thumbnail(source: ModelInputSource, heatmap_png: bytes | None, patch: int | None,
              identity: str | None = None, *, image_id: int | None = None,
              stride: int | None = None) -> Thumbnail | None:
    """JPEG bytes of the view with its heatmap, hung as a reader hangs it (``hanging``), or
    None when there is nothing to draw. ``patch``, ``stride``: the model metadata's
    (``heatmap_in_frame``)."""
    rebuilt = model_frame(source, identity, image_id=image_id)
    frame = rebuilt.pixels
    heat = (heatmap_in_frame(heatmap_png, source.input_size, patch, stride) if heatmap_png
            else None)
    if frame is None and heat is None:
        return None
    shown = [None if plane is None else _crop_to_content(plane, frame) for plane in (frame, heat)]
    height, width = next(p for p in shown if p is not None).shape[:2]
    scale = THUMBNAIL_SIDE / max(height, width)
    size = (round(width * scale), round(height * scale))
    # Shrunk first, blended after: the colouring costs a thumbnail's pixels, not the input
    # frame's (a 0.06 s per view saved on every exam PDF of a night).
    small = overlay(_to_side(shown[0], size), _to_side(shown[1], size))
    hung = hanging(source, rebuilt)
    if hung.chest_wall == "right":
        small = np.ascontiguousarray(small[:, ::-1])  # the blend as a whole: heat stays put
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), _JPEG_PARAMS)
    if not ok:
        raise ValueError("OpenCV could not encode the thumbnail")
    return Thumbnail(bytes(buffer), rebuilt.missing, heat is not None, hung)
