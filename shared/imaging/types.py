"""Value objects passed between readers, preprocessing and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.enums import Laterality, View


@dataclass(frozen=True)
class ImageHeader:
    """What the producer learns from a file without decoding its pixels.

    ``identity`` is the deduplication key: ``"sop:<SOPInstanceUID>"`` for DICOM, or
    ``"sha256:<hex of the file bytes>"`` for every other format.
    """

    format: str
    identity: str
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    laterality: Laterality | None = None
    view: View | None = None
    rows: int | None = None
    columns: int | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as stored (2-D, native dtype) plus what preprocessing needs to interpret them.

    ``max_value`` is the largest value the stored encoding can hold (e.g. 4095 for 12 bits
    stored). ``invert`` is true for MONOCHROME1, where high values are dark.
    """

    pixels: np.ndarray
    format: str
    max_value: float
    invert: bool = False
    notes: dict[str, str] = field(default_factory=dict)
