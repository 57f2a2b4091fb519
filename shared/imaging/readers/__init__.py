"""Image readers: one per family of formats, all with the ``ImageReader`` contract.

``reader_for`` picks a reader from the file's first bytes (never its name: scanners drop
DICOM files without an extension). Each reader imports its own codec (pydicom, OpenCV) so
importing this package stays cheap for the producer; TensorFlow is never imported here.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import UnreadableImageError, UnsupportedFormatError
from shared.imaging.header_bounds import bounded
from shared.imaging.readers.base import HEAD_SIZE, ImageReader, Pseudonymize, open_error, read_head
from shared.imaging.readers.dicom import DICOM
from shared.imaging.readers.pgm import PGM
from shared.imaging.readers.raster import JPEG, PNG
from shared.imaging.readers.tiff import TIFF
from shared.imaging.types import DecodedImage, ImageHeader

# DICOM first: a DICOM file's preamble may itself look like a TIFF header (dual-format files).
READERS: tuple[ImageReader, ...] = (DICOM, PNG, JPEG, TIFF, PGM)
# A .dcm.gz or .png.gz (a PACS or mail export): named, rather than called a format we do not know.
_GZIP_MAGIC = b"\x1f\x8b"

__all__ = ["READERS", "ImageReader", "Pseudonymize", "decode", "read_header", "reader_for"]


def reader_for(path: Path) -> ImageReader:
    """The reader that recognises ``path``'s first bytes; InputError if there is none."""
    path = Path(path)
    try:
        folder = path.is_dir()
    except OSError as exc:  # EACCES on its folder, ESTALE or EIO on a share: not just False
        raise open_error(path, exc) from exc
    if folder:
        raise UnreadableImageError(f"{path.name} is a folder, not an image file.")
    head = read_head(path, HEAD_SIZE)  # MissingFileError when it is gone
    if not head:
        raise UnreadableImageError(f"{path.name} is empty (0 bytes).")
    for reader in READERS:
        if reader.sniff(head):
            return reader
    if head.startswith(_GZIP_MAGIC):
        raise UnsupportedFormatError(
            f"{path.name} is gzip-compressed (its first bytes are gzip's signature, 1F 8B), "
            "not an image itself: decompress it first (gunzip) and submit the file inside."
        )
    raise UnsupportedFormatError(
        f"{path.name} is not a DICOM, PNG, JPEG, TIFF or PGM file (its first bytes match none "
        "of them)."
    )


def read_header(path: Path, *, pseudonymize: Pseudonymize | None = None) -> ImageHeader:
    """Identity and metadata without decoding pixels: what the producer needs.

    ``pseudonymize`` turns a DICOM PatientID into its keyed pseudonym; without it, a file
    that carries a PatientID is refused with ``no_pseudonym_key``. Values longer than the
    database holds are fitted to it (``shared.imaging.header_bounds``), here, so that every
    caller, registration and the later "is it still the same file?" checks alike, sees the
    same identity.
    """
    return bounded(reader_for(path).read_header(Path(path), pseudonymize=pseudonymize))


def decode(path: Path, *, max_pixels: int) -> DecodedImage:
    """Decoded pixels; raises an ``InputError`` subclass for any file that cannot be used."""
    return reader_for(path).decode(Path(path), max_pixels=max_pixels)
