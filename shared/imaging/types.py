"""Value objects passed between readers, preprocessing and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.enums import Laterality, View


@dataclass(frozen=True)
class ImageHeader:
    """What the producer learns from a file without decoding its pixels.

    ``identity`` is the deduplication key: ``"sop:<SOPInstanceUID>"`` for DICOM, or
    ``"sha256:<hex of the file bytes>"`` for every other format. ``view_flags`` marks views
    that are not standard screening views (``spot_compression``, ``magnification``...);
    ``voi`` says which VOI LUT or window the reader applies when there are several.
    """

    format: str
    identity: str
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    accession_number: str | None = None
    # What the exam is keyed by instead of ``accession_number`` when that was not valid
    # text in the file's character set (shown with U+FFFD): its bytes, losslessly
    # (``dicom_text.identity``). None when the accession number itself is the key.
    accession_key: str | None = None
    study_date: str | None = None
    laterality: Laterality | None = None
    view: View | None = None
    rows: int | None = None
    columns: int | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    view_flags: tuple[str, ...] = ()
    burned_in_annotation: bool | None = None
    voi: str | None = None
    # HMAC pseudonym of PatientID (``shared.pseudonym``); the raw ID is never held here.
    patient_pseudonym: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as stored (2-D, native dtype) plus what preprocessing needs to interpret them.

    "As stored", but the right way up: a reader turns pixels its header says are shown
    otherwise (an EXIF Orientation, a DICOM Patient Orientation with the head at the
    bottom) and says so in ``notes["orientation"]``. Which side the chest wall ends up on
    is preprocessing's business (``canonical_orientation``).

    ``max_value`` is the largest value the stored encoding can hold (e.g. 4095 for 12 bits
    stored), ``min_value`` the smallest (0 but for encodings that declare no range, such as
    a float TIFF, whose range is then the data's own). ``invert`` is true for MONOCHROME1,
    where high values are dark.
    ``pixel_spacing_mm`` is (row spacing, column spacing) at the detector, when known.
    ``chest_wall_side`` is where the chest wall lies in the stored pixels when the header
    says so directly (DICOM Patient Orientation); None leaves it to laterality or the image.
    """

    pixels: np.ndarray
    format: str
    max_value: float
    invert: bool = False
    min_value: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)
    pixel_spacing_mm: tuple[float, float] | None = None
    chest_wall_side: Literal["left", "right"] | None = None
