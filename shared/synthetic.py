"""Clearly synthetic, mammogram-like images for the demo and the tests.

No real patient data may ship with the project, so the demo and most tests run on these: a
half-ellipse breast against the chest wall, smooth tissue texture, darker towards the skin,
and optionally a bright round "lesion". Every file says SYNTHETIC in its patient name,
series description and image comments. They are good for plumbing, useless for accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from shared.enums import Laterality, View

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SYNTHETIC_LABEL = "SYNTHETIC - NOT A REAL PATIENT"
# The Manufacturer every synthetic DICOM carries: how reports recognise a synthetic exam.
SYNTHETIC_MANUFACTURER = "SYNTHETIC"
EXAM_VIEWS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.LEFT, View.CC), (Laterality.RIGHT, View.CC),
    (Laterality.LEFT, View.MLO), (Laterality.RIGHT, View.MLO),
)
_FIXED_DATE, _FIXED_TIME = "20000101", "080000"  # fixed: identical bytes for a given seed

__all__ = [
    "DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION", "EXAM_VIEWS", "SYNTHETIC_LABEL", "make_exam_set",
    "synth_mammogram", "write_compressed", "write_dicom", "write_png", "write_truncated_copy",
]
# The JPEG family, which pydicom cannot encode: GDCM's transfer syntax constants by UID.
_GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEGBaselineProcess1",
    "1.2.840.10008.1.2.4.51": "JPEGExtendedProcess2_4",
    "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14",
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",
}


def synth_mammogram(
    rng: np.random.Generator,
    size: tuple[int, int] = (512, 416),
    laterality: Laterality = Laterality.LEFT,
    lesion: bool = False,
    bits: int = 12,
) -> np.ndarray:
    """A (rows, columns) uint16 image with values in [0, 2**bits - 1].

    The chest wall is on the left edge for a LEFT breast and on the right edge for a RIGHT
    one, as in stored mammograms (and in mini-MIAS).
    """
    rows, columns = size
    y, x = np.ogrid[0:rows, 0:columns]
    depth = (x if laterality is not Laterality.RIGHT else columns - 1 - x).astype(np.float32)
    centre = rows * rng.uniform(0.45, 0.55)
    reach, half_height = columns * rng.uniform(0.7, 0.9), rows * rng.uniform(0.38, 0.46)
    radius = np.sqrt((depth / reach) ** 2 + ((y - centre) / half_height) ** 2)
    # An ellipsoid's thickness: X-rays cross less tissue towards the skin, so it darkens.
    thickness = np.sqrt(np.clip(1.0 - radius**2, 0.0, 1.0)).astype(np.float32)
    tissue = 0.8 + 0.35 * _smooth_noise(rng, size)
    image = thickness**0.5 * (0.3 + 0.45 * tissue)
    image += 0.05 * ((radius > 0.975) & (radius < 1.0))  # a faint skin line
    if lesion:
        image += _lesion(rng, radius, size)
    image += np.abs(rng.normal(0.0, 0.004, size)).astype(np.float32)  # detector noise
    top = 2**bits - 1
    scaled: np.ndarray = np.rint(np.clip(image, 0.0, 1.0) * top)
    return scaled.astype(np.uint16)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Low-pass noise around 0 at two scales: lobes and finer fibroglandular strands."""
    rows, columns = size
    texture = np.zeros(size, dtype=np.float32)
    for cell, weight in ((48, 0.7), (12, 0.3)):
        coarse = rng.standard_normal((rows // cell + 2, columns // cell + 2)).astype(np.float32)
        texture += weight * cv2.resize(coarse, (columns, rows), interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.GaussianBlur(texture, (0, 0), 2.0), dtype=np.float32)


def _lesion(rng: np.random.Generator, radius: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows, columns = size
    inside = np.argwhere(np.broadcast_to(radius < 0.6, size))
    cy, cx = inside[rng.integers(len(inside))]
    spread = min(size) * rng.uniform(0.03, 0.06)
    y, x = np.ogrid[0:rows, 0:columns]
    distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / spread
    mass: np.ndarray = 0.3 * np.exp(-(distance**4))  # flat-topped round mass
    return mass.astype(np.float32)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str,
    sop_uid: str,
    laterality: Laterality,
    view: View,
    patient_id: str | None = None,
    accession: str = "SYN0001",
    monochrome1: bool = False,
    bits: int = 12,
    comments: str = SYNTHETIC_LABEL,
) -> Path:
    """An uncompressed (Explicit VR Little Endian) MG For Presentation Part 10 file.

    An empty (0010,0020) Patient ID unless ``patient_id`` is given: a file carrying one is refused
    when no pseudonymisation key is configured, and the demo must run without configuration.

    With ``monochrome1`` the stored values are inverted (``2**bits - 1 - pixels``), so after
    a reader's MONOCHROME1 inversion the image looks exactly like the MONOCHROME2 one.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    top = 2**bits - 1
    if pixels.ndim != 2 or pixels.min() < 0 or pixels.max() > top:
        raise ValueError(f"Expected a 2-D image with values in [0, {top}].")
    stored = (top - pixels if monochrome1 else pixels).astype("<u2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = UID(DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION)
    ds.SOPInstanceUID, ds.StudyInstanceUID = UID(sop_uid), UID(study_uid)
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series"])
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _FIXED_TIME
    ds.AccessionNumber, ds.Modality = accession, "MG"
    ds.Manufacturer, ds.ManufacturerModelName = SYNTHETIC_MANUFACTURER, "mammo synthetic generator"
    # Type 2: present, and empty unless asked for.
    ds.PatientName, ds.PatientID = "SYNTHETIC^PATIENT", patient_id or ""
    ds.PatientBirthDate, ds.PatientSex = "", "F"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType, ds.BurnedInAnnotation = "FOR PRESENTATION", "NO"
    ds.SeriesDescription, ds.ImageComments = SYNTHETIC_LABEL, comments
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageLaterality, ds.ViewPosition = laterality.value, view.value
    ds.SamplesPerPixel, (ds.Rows, ds.Columns) = 1, pixels.shape
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = (top + 1) / 2, top + 1  # the full stored range
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit grayscale PNG holding ``pixels`` unchanged."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(pixels, dtype=np.uint16)):
        raise OSError(f"OpenCV could not write {path}.")
    return Path(path)


def make_exam_set(
    directory: Path, n_exams: int, seed: int, fmt: Literal["dicom", "png"] = "dicom",
    size: tuple[int, int] = (512, 416),
) -> list[Path]:
    """Write ``n_exams`` four-view exams (L/R x CC/MLO) of ``size`` pixels (rows, columns);
    the same seed gives the same files.

    Exams 1, 4, 7, ... (every third, from the second) have a lesion in one breast, seen in
    both its views; their image comments say so. PNGs are scaled from 12 to 16 bits so
    they use the full range a 16-bit PNG reader expects.
    """
    from pydicom.uid import generate_uid

    if fmt not in ("dicom", "png"):
        raise ValueError(f"fmt must be 'dicom' or 'png', not {fmt!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for exam in range(n_exams):
        # A fixed org prefix: with prefix=None pydicom ignores the entropy (random UUID UIDs).
        study_uid = generate_uid(entropy_srcs=["mammo-synthetic", str(seed), str(exam)])
        sick = (Laterality.LEFT, Laterality.RIGHT)[int(rng.integers(2))] \
            if exam % 3 == 1 else None
        for laterality, view in EXAM_VIEWS:
            lesion = laterality is sick
            pixels = synth_mammogram(rng, size, laterality=laterality, lesion=lesion)
            stem = directory / f"exam{exam:04d}_{laterality.value}{view.value}"
            if fmt == "png":
                paths.append(write_png(stem.with_suffix(".png"), pixels << 4))
                continue
            paths.append(write_dicom(
                stem.with_suffix(".dcm"), pixels, study_uid=study_uid,
                sop_uid=generate_uid(entropy_srcs=[study_uid, laterality.value, view.value]),
                laterality=laterality, view=view,
                accession=f"SYN{exam:09d}",
                comments=f"{SYNTHETIC_LABEL}; lesion: {'yes' if lesion else 'no'}",
            ))
    return paths


def write_truncated_copy(source: Path, destination: Path) -> Path:
    """A copy of a DICOM file whose (7FE0,0010) Pixel Data is cut to half its length.

    The header stays valid (the producer registers it) and decoding fails as truncated: the
    realistic "half-written transfer" case. It gets its own SOP Instance UID, derived from the
    source's, so it is a distinct image rather than a duplicate of ``source``.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(source)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "truncated"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    data = bytes(ds.PixelData)
    ds.PixelData = data[: len(data) // 4 * 2]  # keep an even length, as DICOM requires
    ds.save_as(destination, enforce_file_format=True)
    return Path(destination)


def write_compressed(source: Path, destination: Path, syntax: str) -> Path:
    """A copy of the DICOM ``source`` in transfer syntax ``syntax`` (a UID).

    pydicom encodes RLE, JPEG-LS and JPEG 2000 (with pyjpegls / pylibjpeg-openjpeg) and
    writes deflated or implicit VR files; GDCM encodes the JPEG family (baseline needs
    8-bit pixels). Raises ``RuntimeError`` when this installation has no encoder for it.
    """
    from pydicom import dcmread
    from pydicom.uid import UID

    uid = UID(syntax)
    if str(uid) in _GDCM_SYNTAXES:
        return _gdcm_recompress(source, destination, _GDCM_SYNTAXES[str(uid)])
    ds = dcmread(source)
    if uid.is_compressed:
        ds.compress(uid)  # RuntimeError when no encoder plugin is installed
    else:
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(destination, enforce_file_format=True)
    return Path(destination)


def _gdcm_recompress(source: Path, destination: Path, syntax: str) -> Path:
    try:
        import gdcm
    except ImportError as exc:
        raise RuntimeError(f"Encoding {syntax} needs python-gdcm.") from exc
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {source}.")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(destination))
    writer.SetFile(reader.GetFile())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {source} as {syntax}.")
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {destination}.")
    return Path(destination)
