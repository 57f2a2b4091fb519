"""The MIAS layout: ``Info.txt`` (the database's truth table) plus ``mdbNNN`` images.

Facts taken from the database's own notes, not invented here:
* one row per abnormality; an image's label is malignant if any row is M, else benign if any
  row is B, else normal;
* x, y give the centre of a circle enclosing the abnormality, origin at the BOTTOM-LEFT
  corner, so the row index is ``height - y``; some rows have no coordinates;
* consecutive numbers are one patient: even = left breast, odd = right breast
  (mdb001 + mdb002 is one patient).
"""

from __future__ import annotations

import re
from pathlib import Path

from models.datasets import LabelledImage, Roi
from shared.enums import Label, Laterality
from shared.errors import DatasetError, InputError
from shared.imaging.readers import read_header

INFO_FILE = "Info.txt"
MIAS_HEIGHT = 1024  # every mini-MIAS image is 1024 x 1024 (Info.txt note 2); the fallback
# "*NOTE 3*" marks widely distributed calcifications: a label without a circle.
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([BM]))?"
                  r"(?:\s+(\d+)\s+(\d+)\s+(\d+))?(?:\s+\*NOTE\s*\d\*)?\s*$")
_SUFFIXES = (".pgm", ".png")


def _number(image_id: str) -> int:
    return int(image_id[3:])


def patient_of(image_id: str) -> str:
    """mdb001 and mdb002 -> 'mias-001'; the pair's odd number names the patient."""
    n = _number(image_id)
    return f"mias-{n - (n + 1) % 2:03d}"


def laterality_of(image_id: str) -> Laterality:
    return Laterality.LEFT if _number(image_id) % 2 == 0 else Laterality.RIGHT


def load_mias(folder: Path) -> list[LabelledImage]:
    rows: dict[str, list[tuple[str, str | None, tuple[int, int, int] | None]]] = {}
    for line in (folder / INFO_FILE).read_text(encoding="latin-1").splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        ref, _tissue, kind, severity, x, y, r = match.groups()
        coords = (int(x), int(y), int(r)) if x is not None else None
        rows.setdefault(ref, []).append((kind, severity, coords))
    if not rows:
        raise DatasetError(f"{folder / INFO_FILE} has no truth-table rows (mdbNNN ...).")
    images = []
    for ref, findings in rows.items():
        path = next((folder / f"{ref}{s}" for s in _SUFFIXES if (folder / f"{ref}{s}").is_file()),
                    None)
        if path is None:
            continue  # Info.txt describes the full database; a split holds part of it
        severities = {s for _, s, _ in findings if s}
        label = (Label.MALIGNANT if "M" in severities else
                 Label.BENIGN if "B" in severities else Label.NORMAL)
        height = _height(path) if any(c for _, _, c in findings) else MIAS_HEIGHT
        rois = tuple(
            Roi(x=float(c[0]), y=float(height - c[1]), radius=float(c[2]),
                severity=Label.MALIGNANT if s == "M" else Label.BENIGN)
            for _, s, c in findings if c is not None and s)
        images.append(LabelledImage(id=ref, path=path, label=label, patient_id=patient_of(ref),
                                    laterality=laterality_of(ref), view="MLO", rois=rois))
    return images


def _height(path: Path) -> int:
    """Rows of the stored image (1024 for mini-MIAS), read from its header only."""
    try:
        rows = read_header(path).rows
    except InputError:
        return MIAS_HEIGHT
    return int(rows) if rows else MIAS_HEIGHT
