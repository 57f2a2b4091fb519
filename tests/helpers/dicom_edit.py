"""Edit a DICOM file in place: set tags, or delete those given as None."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def rewrite_dicom(path: Path, **changes: object) -> Dataset:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return ds
