"""Metadata for files that carry none (PNG, JPEG, TIFF, PGM): a CSV manifest, or a
documented filename convention. Without either, laterality and view stay unknown.

Manifest: a CSV file with a header row. ``path`` is required (absolute, or relative to the
manifest's folder); the other columns are optional and may be empty:

    path,patient_id,laterality,view,study_id,accession,label,pixel_spacing_mm
    scans/0001_L_CC.png,P0001,L,CC,EXAM-0001,ACC0001,normal,0.1

``patient_id`` is pseudonymised (HMAC, ``MAMMO_PATIENT_ID_KEY``) while the manifest is read;
a manifest holding patient IDs is refused when no key is configured. ``label`` (normal,
benign, malignant) is stored for evaluation only. Unknown columns are ignored.

Filename convention (used when a file has no manifest row): mini-MIAS ``mdbNNN.png|.pgm``.
The data set pairs consecutive numbers as the two breasts of one patient, even = left,
odd = right (``../shared/data/mini-mias/README.md``; the image-based orientation check of
``shared.imaging.preprocess`` agrees on 256 of its 258 images); all are MLO views at
200 micron pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shared.enums import Label, Laterality, View
from shared.errors import ManifestError
from shared.imaging.header_bounds import fitted_key
from shared.imaging.readers import Pseudonymize
from shared.imaging.types import ImageHeader
from shared.pseudonym import KEY_HINT

COLUMNS = ("path", "patient_id", "laterality", "view", "study_id", "accession", "label",
           "pixel_spacing_mm")
_UID_LENGTH = 64  # studies.study_uid, as DICOM UIDs
_MINI_MIAS = re.compile(r"^mdb(\d{3})\.(png|pgm)$", re.IGNORECASE)
_MINI_MIAS_SPACING_MM = 0.2
# Where csv.DictReader puts the values of a row longer than the header (not a column name).
_EXTRA = "\x00extra"
_T = TypeVar("_T")

__all__ = [
    "COLUMNS", "FileMetadata", "Manifest", "apply_metadata", "exam_key", "filename_convention",
    "metadata_source",
]


@dataclass(frozen=True)
class FileMetadata:
    """What a manifest row or a filename says about one file; None = not said."""

    laterality: Laterality | None = None
    view: View | None = None
    patient_pseudonym: str | None = None
    study_id: str | None = None
    accession: str | None = None
    label: Label | None = None
    pixel_spacing_mm: tuple[float, float] | None = None


class Manifest:
    """Rows of a manifest CSV, looked up by the resolved path of each submitted file."""

    def __init__(self, entries: dict[Path, FileMetadata], source: Path) -> None:
        self.entries = entries
        self.source = source

    @classmethod
    def load(cls, path: Path, *, pseudonymize: Pseudonymize | None) -> Manifest:
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle, restkey=_EXTRA)
                rows = [(reader.line_num, raw) for raw in reader]
                fields = [name.strip().lower() for name in reader.fieldnames or []]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ManifestError(f"The manifest {path} could not be read: {exc}.") from exc
        if rows and "path" not in fields:
            raise ManifestError(
                f"The manifest {path} has no 'path' column (columns found: "
                f"{', '.join(fields) or 'none'}; expected {', '.join(COLUMNS)}).")
        entries: dict[Path, FileMetadata] = {}
        for line, raw in rows:
            where = f"{path}, line {line}"
            if _EXTRA in raw:
                raise ManifestError(
                    f"{where}: {len(raw[_EXTRA])} more value(s) than the header row has "
                    "columns; a value holding a comma must be in double quotes.")
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            if not row.get("path"):
                raise ManifestError(f"{where}: the 'path' value is empty.")
            try:
                file = (path.parent / row["path"]).resolve()
            except (OSError, ValueError) as exc:  # a NUL byte, a name too long
                raise ManifestError(
                    f"{where}: {row['path']!r} is not a usable file path ({exc}).") from exc
            entries[file] = _entry(row, where, pseudonymize)
        return cls(entries, path)

    def lookup(self, file: Path) -> FileMetadata | None:
        return self.entries.get(Path(file).resolve())


def filename_convention(file: Path) -> FileMetadata | None:
    """Metadata a documented naming scheme gives (mini-MIAS only), or None."""
    match = _MINI_MIAS.match(Path(file).name)
    if match is None:
        return None
    number = int(match.group(1))
    return FileMetadata(
        laterality=Laterality.LEFT if number % 2 == 0 else Laterality.RIGHT, view=View.MLO,
        pixel_spacing_mm=(_MINI_MIAS_SPACING_MM, _MINI_MIAS_SPACING_MM))


def metadata_source(manifest: Manifest | None) -> Callable[[Path], FileMetadata | None]:
    """The manifest's row for a file, else the filename convention's metadata, else None."""
    def lookup(file: Path) -> FileMetadata | None:
        entry = manifest.lookup(file) if manifest else None
        return entry or filename_convention(file)
    return lookup


def manifest_study_uid(study_id: str) -> str:
    """The exam key of a manifest's study ID."""
    return exam_key("manifest", study_id)


def exam_key(kind: str, value: str) -> str:
    """``kind:value``, the key of an exam without a StudyInstanceUID, within the 64
    characters a UID may have.

    A longer value keeps its start and gets a digest of the whole, so two long values that
    share their first 55 characters stay two exams instead of being merged into one.
    """
    return fitted_key(f"{kind}:{value}", _UID_LENGTH, digest_of=value)


def apply_metadata(header: ImageHeader, metadata: FileMetadata | None) -> ImageHeader:
    """Fill what the file's own header leaves unknown; a DICOM header always wins."""
    if metadata is None:
        return header
    study_uid = header.study_instance_uid or (
        manifest_study_uid(metadata.study_id) if metadata.study_id else None)
    return dataclasses.replace(
        header,
        laterality=header.laterality or metadata.laterality,
        view=header.view or metadata.view,
        patient_pseudonym=header.patient_pseudonym or metadata.patient_pseudonym,
        study_instance_uid=study_uid,
        accession_number=header.accession_number or metadata.accession,
        pixel_spacing_mm=header.pixel_spacing_mm or metadata.pixel_spacing_mm,
    )


def _entry(row: dict[str, str], where: str,
           pseudonymize: Pseudonymize | None) -> FileMetadata:
    patient_id = row.get("patient_id") or None
    if patient_id and pseudonymize is None:
        raise ManifestError(
            f"{where}: the manifest holds patient IDs and no key is configured to "
            f"pseudonymise them; patient IDs are never stored in clear. {KEY_HINT}.")
    return FileMetadata(
        laterality=_parse(row, "laterality", Laterality.parse, where),
        view=_parse(row, "view", View.parse, where),
        patient_pseudonym=pseudonymize(patient_id) if patient_id and pseudonymize else None,
        study_id=row.get("study_id") or None,
        accession=row.get("accession") or None,
        label=_parse(row, "label", _label, where),
        pixel_spacing_mm=_parse(row, "pixel_spacing_mm", _spacing, where),
    )


def _parse(row: dict[str, str], column: str, parser: Callable[[str], _T | None],
           where: str) -> _T | None:
    text = row.get(column) or ""
    if not text:
        return None
    value = parser(text)
    if value is None:
        raise ManifestError(f"{where}: '{text}' is not a valid {column}.")
    return value


def _label(text: str) -> Label | None:
    try:
        return Label(text.lower())
    except ValueError:
        return None


def _spacing(text: str) -> tuple[float, float] | None:
    try:
        values = [float(part) for part in re.split(r"[\\x ]+", text) if part]
    except ValueError:
        return None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]
