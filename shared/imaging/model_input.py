"""From a stored image row to the tensor the model sees: decode, then preprocess.

One sequence for every consumer (the worker's decoder processes, the exam report's
thumbnails), so the frame a report draws a heatmap on is exactly the frame that was scored.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.enums import Laterality
from shared.errors import InputError, MissingFileError
from shared.imaging.identity import file_has_identity
from shared.imaging.preprocess import ChestWallSide, preprocess_with_notes
from shared.imaging.readers import decode

__all__ = ["ModelInput", "ModelInputSource", "load_model_input"]


@dataclass(frozen=True)
class ModelInputSource:
    """Plain, picklable values: what is needed to rebuild one image's model input."""

    path: str
    laterality: str | None
    # From the manifest or header at intake; used when the file itself states no spacing.
    spacing_mm: tuple[float, float] | None
    input_size: tuple[int, int]
    max_pixels: int
    # The identity registered for ``path`` ("sop:..." or "sha256:..."); when given, a file
    # now at the path with another identity is refused instead of scored as this image.
    identity: str | None = None


@dataclass(frozen=True)
class ModelInput:
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float
    # What preprocessing noticed (a breast lying against its stated laterality), then the
    # reader's notes on how it read the file (DecodedImage.notes).
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    # Where the stored file has the chest wall, and whether its header said so
    # (``Prepared``): the report hangs a view of unknown laterality that way.
    chest_wall: ChestWallSide = "left"
    chest_wall_stated: bool = False


def load_model_input(source: ModelInputSource) -> ModelInput:
    """Decode and preprocess one image; an unusable input raises ``InputError``."""
    started = time.perf_counter()
    path = Path(source.path)
    decoded = decode(path, max_pixels=source.max_pixels)
    if decoded.pixel_spacing_mm is None and source.spacing_mm is not None:
        decoded = dataclasses.replace(decoded, pixel_spacing_mm=source.spacing_mm)
    decoded_at = time.perf_counter()
    try:
        prepared = preprocess_with_notes(decoded, source.input_size,
                                         laterality=Laterality.parse(source.laterality))
    except InputError as exc:
        # Preprocessing sees pixels, not paths: its refusals ("The image is too small...")
        # get the file's name here, like every reader's.
        if path.name in exc.message:
            raise
        raise type(exc)(f"{path.name}: {exc.message}", code=exc.code) from exc
    # Last: a file that is unusable now fails with what is wrong with it; only an image
    # that would be scored, and is not the registered one, is refused as a replacement.
    if source.identity is not None and not file_has_identity(path, source.identity):
        raise MissingFileError(
            f"{path.name} was replaced by another file after it was queued: the file now at "
            "this path is not the image that was registered (its SOP Instance UID or bytes "
            "differ). The new file is processed as its own image once submitted (a watched "
            "folder does this itself).")
    return ModelInput(prepared.tensor, (decoded_at - started) * 1000,
                      (time.perf_counter() - decoded_at) * 1000,
                      {**prepared.notes, **decoded.notes}, prepared.chest_wall,
                      prepared.chest_wall_stated)
