"""``READER_VERSION``: which release's readers read the file a prediction was made from.

Bump it whenever any reader's output changes for some file: decoding (pixel values, bit
depth, alpha, orientation), windowing, or how laterality and view are read. Every prediction
records it (``predictions.reader_version``), and `mammo rescore --reread` re-scores the done
images whose current prediction another reader version made, the model's own included, as
the model and preprocessing stayed the same and ``PREPROCESSING_VERSION`` (sealed into the
models) cannot tell them apart. NULL: scored by a release before it was recorded.

"2": DICOM High Bit and understated Bits Stored (0c9bb90), PNG/TIFF alpha (d65f4a8),
laterality from View Position's letter and spelt-out view names (c462fab).
"3": a DICOM whose (0020,0020) Patient Orientation puts the head at the bottom (second
value with H and no F: "A\\HR", "P\\H") is turned the right way up, with an
``orientation`` note; a second value naming H and F, or no direction, is noted, not turned.
"""

from __future__ import annotations

READER_VERSION = "3"

__all__ = ["READER_VERSION"]
