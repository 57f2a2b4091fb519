"""12-bit JPEG Extended (Process 2 & 4) through GDCM's own file reader.

No pydicom decoding plugin accepts 12-bit lossy JPEG: pydicom's GDCM and Pillow plugins
refuse it up front and libjpeg fails on the stream. GDCM itself decodes it (it carries a
12-bit build of the IJG library), so for this one transfer syntax the file is handed to
``gdcm.ImageReader`` and only the stored values come back; the rescale and VOI steps stay
pydicom's. Imported only when such a file arrives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.errors import UnreadableImageError

__all__ = ["available", "decode_stored_values"]


def available() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_stored_values(path: Path, rows: int, columns: int) -> np.ndarray:
    """The (rows, columns) stored values of a single-frame grayscale file."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise UnreadableImageError(f"{path.name}: GDCM could not read the file.")
    image = reader.GetImage()
    scalar = image.GetPixelFormat().GetScalarType()
    dtypes = {
        gdcm.PixelFormat.UINT8: np.uint8, gdcm.PixelFormat.INT8: np.int8,
        gdcm.PixelFormat.UINT16: np.uint16, gdcm.PixelFormat.INT16: np.int16,
    }
    if scalar not in dtypes:
        raise UnreadableImageError(
            f"{path.name}: GDCM decoded an unexpected pixel type "
            f"({image.GetPixelFormat().GetScalarTypeAsString()}).")
    # GDCM's Python binding returns the buffer as a str holding the raw bytes, or None
    # when the compressed stream is damaged.
    buffer = image.GetBuffer()
    if buffer is None:
        raise UnreadableImageError(
            f"{path.name}: its 12-bit JPEG pixel data is damaged; GDCM could not decode it.")
    raw = buffer.encode("utf-8", "surrogateescape")
    values = np.frombuffer(raw, dtype=np.dtype(dtypes[scalar]).newbyteorder("<"))
    if values.size != rows * columns:
        raise UnreadableImageError(
            f"{path.name}: GDCM decoded {values.size:,} values, {rows * columns:,} expected "
            f"for {columns} x {rows}.")
    return values.reshape(rows, columns)
