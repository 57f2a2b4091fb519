"""Inputs for tests/benchmarks/pipeline.py: full-size synthetic DICOMs and the real files.

One 12-bit mammogram is synthesised (and compressed once, when asked); each of the N files
is that image under its own Study/SOP Instance UIDs, so every file is a distinct image to
the pipeline while costing exactly the same to decode. Real files are used in place, never
copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread

from shared.enums import Laterality, View
from shared.synthetic import synth_mammogram, write_compressed, write_dicom

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SYNTAXES = {
    "uncompressed": None,
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (GDCM)
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless (OpenJPEG)
}


def synthetic_set(folder: Path, n: int, size: tuple[int, int], kind: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = folder.parent / f"{kind}-base.dcm"
    pixels = synth_mammogram(np.random.default_rng(0), size=size, laterality=Laterality.LEFT)
    write_dicom(base, pixels, study_uid="1.2.826.0.1.3680043.9.7.0",
                sop_uid="1.2.826.0.1.3680043.9.8.0", laterality=Laterality.LEFT, view=View.CC)
    syntax = SYNTAXES[kind]
    if syntax is not None:
        base = write_compressed(base, folder.parent / f"{kind}-base-c.dcm", syntax)
    ds = dcmread(base)
    root = f"1.2.826.0.1.3680043.9.{sum(map(ord, kind))}"
    paths = []
    for i in range(n):
        ds.StudyInstanceUID = f"{root}.1.{i // 4 + 1}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{root}.2.{i + 1}"
        path = folder / f"img{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def real_set(limit: int) -> list[Path]:
    """../shared/data's DICOMs (some fail, by design) and up to ``limit`` mini-MIAS PNGs."""
    if not SHARED_DATA.is_dir():
        return []
    dicoms = sorted((SHARED_DATA / "dicom").glob("*.dcm"))
    pngs = sorted((SHARED_DATA / "mini-mias").glob("mdb*.png"))
    return dicoms + pngs[:max(0, limit - len(dicoms))]


def header_only_set(folder: Path, n: int) -> list[Path]:
    """N small DICOMs: the producer reads headers only, so pixel size does not matter."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(1), size=(96, 80))
    return [write_dicom(folder / f"h{i:06d}.dcm", pixels, study_uid=f"1.2.826.0.1.77.{i // 4}",
                        sop_uid=f"1.2.826.0.1.77.{i // 4}.{i}", laterality=Laterality.LEFT,
                        view=View.CC) for i in range(n)]
