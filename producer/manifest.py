"""Metadata for files that carry none (PNG, JPEG, TIFF, PGM): a CSV manifest, or a
documented filename convention. Without either, laterality and view stay unknown.

Manifest: a CSV file with a header row. ``path`` is required (absolute, or relative to the
manifest's folder); the other columns are optional and may be empty:

    path,patient_id,laterality,view,study_id,accession,study_date,label,pixel_spacing_mm
    scans/0001_L_CC.png,P0001,L,CC,EXAM-0001,ACC0001,20240131,normal,0.1

``patient_id`` is pseudonymised (HMAC, ``MAMMO_PATIENT_ID_KEY``) while the manifest is read;
a manifest holding patient IDs is refused when no key is configured. The pseudonym is stored
with the image's exam, so a row with a patient ID must say which exam: ``study_id``,
``accession`` or ``study_date`` (the patient's exam of that day, as for a DICOM without a
StudyInstanceUID); one without is refused rather than the patient silently dropped. The
exam's key holds the pseudonym with the study ID (``manifest_study_uid``): sites and nights
reuse exam numbers, and two patients' images must never make one exam.
``label`` (normal, benign, malignant) is stored for evaluation only.

A manifest is checked whole before any file is registered, and refused with the line and
what is wrong: a column that is none of ``COLUMNS`` (a misspelt one would drop its data), a
value no DICOM file could carry either, two rows for one file that disagree, a quote left
open. Rows that match no submitted file are only warned about (``unmatched_warning``).

Filename convention (used when a file has no manifest row): mini-MIAS ``mdbNNN.png|.pgm``.
The data set pairs consecutive numbers as the two breasts of one patient, even = left,
odd = right (``../shared/data/mini-mias/README.md``; the image-based orientation check of
``shared.imaging.preprocess`` agrees on 256 of its 258 images); all are MLO views at
200 micron pixels.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from shared.enums import Label, Laterality, View
from shared.errors import ManifestError
from shared.imaging.header_bounds import fitted_key, storable, study_date
from shared.imaging.readers import Pseudonymize
from shared.imaging.types import ImageHeader
from shared.manifest_csv import (
    COLUMNS,
    check_columns,
    delimiter_hint,
    header_found,
    read_rows,
)
from shared.pseudonym import KEY_HINT

# The columns that put an image in an exam, which is where its patient's pseudonym is kept.
_EXAM_COLUMNS = ("study_id", "accession", "study_date")
_UNMATCHED_SHOWN = 3
_UID_LENGTH = 64  # studies.study_uid, as DICOM UIDs
_MINI_MIAS = re.compile(r"^mdb(\d{3})\.(png|pgm)$", re.IGNORECASE)
_MINI_MIAS_SPACING_MM = 0.2
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
    study_date: str | None = None  # YYYYMMDD
    # Guessed from the file's name (``filename_convention``), not stated by a manifest row:
    # a manifest row giving the same bytes other values later corrects them (registration).
    inferred: bool = False


@dataclass(frozen=True)
class _Row:
    line: int  # where the row starts (a quoted value may span lines)
    path: str  # as written
    metadata: FileMetadata


class Manifest:
    """Rows of a manifest CSV, looked up by the resolved path of each submitted file."""

    def __init__(self, entries: dict[Path, FileMetadata], source: Path,
                 written: dict[Path, tuple[int, str]] | None = None) -> None:
        self.entries = entries
        self.source = source
        self._written = written or {}  # file -> (line, path as written), for warnings
        self._matched: set[Path] = set()

    @classmethod
    def load(cls, path: Path, *, pseudonymize: Pseudonymize | None) -> Manifest:
        fields, rows = read_rows(path)
        if rows and "path" not in fields:
            raise ManifestError(
                f"The manifest {path} has no 'path' column ({header_found(fields)}; expected "
                f"{', '.join(COLUMNS)}){delimiter_hint(fields)}")
        check_columns(path, fields, rows)
        seen: dict[Path, _Row] = {}
        for line, values in rows:
            where = f"{path}, line {line}"
            row = {name: value.strip() for name, value in zip(fields, values, strict=False)
                   if name}
            if not row.get("path"):
                raise ManifestError(f"{where}: the 'path' value is empty.")
            try:
                file = (path.parent / row["path"]).resolve()
            except (OSError, ValueError) as exc:  # a NUL byte, a name too long
                raise ManifestError(
                    f"{where}: {row['path']!r} is not a usable file path ({exc}).") from exc
            entry = _Row(line, row["path"], _entry(row, where, pseudonymize))
            if (first := seen.setdefault(file, entry)) is not entry:
                _check_repeat(where, first, entry)
        return cls({file: row.metadata for file, row in seen.items()}, path,
                   {file: (row.line, row.path) for file, row in seen.items()})

    def lookup(self, file: Path) -> FileMetadata | None:
        resolved = Path(file).resolve()
        entry = self.entries.get(resolved)
        if entry is not None:
            self._matched.add(resolved)
        return entry

    def unmatched_warning(self) -> str | None:
        """What to tell about rows no file looked up so far matched, or None when all did.

        Such a row is harmless (a path outside the folders submitted is never read through
        a manifest) but usually a mistake: a typo in the path, or the wrong folder given.
        """
        unmatched = [self._written.get(file, (0, str(file))) for file in self.entries
                     if file not in self._matched]
        if not unmatched:
            return None
        shown = ", ".join(f"line {line} '{text}'" for line, text in
                          sorted(unmatched)[:_UNMATCHED_SHOWN])
        more = ", ..." if len(unmatched) > _UNMATCHED_SHOWN else ""
        return (f"{len(unmatched)} row(s) of the manifest {self.source} matched no submitted "
                f"file, so their metadata was not used ({shown}{more}): check that those "
                "paths, relative to the manifest's folder, name files under the paths given.")


def filename_convention(file: Path) -> FileMetadata | None:
    """Metadata a documented naming scheme gives (mini-MIAS only), or None."""
    match = _MINI_MIAS.match(Path(file).name)
    if match is None:
        return None
    number = int(match.group(1))
    return FileMetadata(
        laterality=Laterality.LEFT if number % 2 == 0 else Laterality.RIGHT, view=View.MLO,
        pixel_spacing_mm=(_MINI_MIAS_SPACING_MM, _MINI_MIAS_SPACING_MM), inferred=True)


def metadata_source(manifest: Manifest | None) -> Callable[[Path], FileMetadata | None]:
    """The manifest's row for a file, else the filename convention's metadata, else None."""
    def lookup(file: Path) -> FileMetadata | None:
        entry = manifest.lookup(file) if manifest else None
        return entry or filename_convention(file)
    return lookup


def manifest_study_uid(study_id: str, patient_pseudonym: str | None = None) -> str:
    """The exam key of a manifest's study ID, with its patient's pseudonym when the row
    names one: sites (or nights) reuse exam numbers, and two patients' images under one
    key would be one exam, each breast read against another woman's. Without a patient
    the key is the study ID's alone, as it always was."""
    if patient_pseudonym:
        return exam_key("manifest", f"{patient_pseudonym}:{study_id}")
    return exam_key("manifest", study_id)


def legacy_manifest_key(key: str, patient_pseudonym: str | None) -> str | None:
    """The key ``manifest_study_uid`` gave the same row before it held the patient
    (``manifest:STUDY``), for a key of today's form (``manifest:PSEUDONYM:STUDY``); None for
    another key, or one cut to fit (its study ID can no longer be read back)."""
    prefix = f"manifest:{patient_pseudonym}:"
    if not patient_pseudonym or not key.startswith(prefix) or len(key) >= _UID_LENGTH:
        return None
    return exam_key("manifest", key.removeprefix(prefix))


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
    patient = header.patient_pseudonym or metadata.patient_pseudonym
    study_uid = header.study_instance_uid or (
        manifest_study_uid(metadata.study_id, patient) if metadata.study_id else None)
    return dataclasses.replace(
        header,
        laterality=header.laterality or metadata.laterality,
        view=header.view or metadata.view,
        patient_pseudonym=patient,
        study_instance_uid=study_uid,
        accession_number=header.accession_number or metadata.accession,
        study_date=header.study_date or metadata.study_date,
        pixel_spacing_mm=header.pixel_spacing_mm or metadata.pixel_spacing_mm,
    )


def _check_repeat(where: str, first: _Row, again: _Row) -> None:
    """Two rows for one file may repeat each other, not disagree."""
    if again.metadata == first.metadata:
        return
    differ = [field.name for field in dataclasses.fields(FileMetadata)
              if getattr(first.metadata, field.name) != getattr(again.metadata, field.name)]
    names = ", ".join("patient_id" if name == "patient_pseudonym" else name for name in differ)
    raise ManifestError(
        f"{where}: '{again.path}' names the same file as line {first.line} with another "
        f"{names}: keep one row per file, with the right values.")


def _entry(row: dict[str, str], where: str,
           pseudonymize: Pseudonymize | None) -> FileMetadata:
    patient_id = row.get("patient_id") or None
    if patient_id and pseudonymize is None:
        raise ManifestError(
            f"{where}: the manifest holds patient IDs and no key is configured to "
            f"pseudonymise them; patient IDs are never stored in clear. {KEY_HINT}.")
    if patient_id and not any(row.get(column) for column in _EXAM_COLUMNS):
        raise ManifestError(
            f"{where}: a patient_id without {', '.join(_EXAM_COLUMNS[:-1])} or "
            f"{_EXAM_COLUMNS[-1]}: the patient is recorded with the image's exam, and "
            "nothing says which exam this is. Fill one of them (study_date as YYYYMMDD "
            "groups the patient's images of that day), or leave patient_id empty.")
    return FileMetadata(
        laterality=_parse(row, "laterality", Laterality.parse, where,
                          "L, R or B (left, right, both)"),
        view=_parse(row, "view", _view, where, ", ".join(View)),
        patient_pseudonym=pseudonymize(patient_id) if patient_id and pseudonymize else None,
        # A NUL in them written as the text \x00 the database can hold (``storable``),
        # before the exam's key is made from them.
        study_id=storable(row["study_id"]) if row.get("study_id") else None,
        accession=storable(row["accession"]) if row.get("accession") else None,
        label=_parse(row, "label", _label, where, ", ".join(Label)),
        pixel_spacing_mm=_parse(row, "pixel_spacing_mm", _spacing, where,
                                "millimetres per pixel above 0, e.g. 0.1 or 0.1\\0.12"),
        study_date=_parse(row, "study_date", _date, where, "YYYYMMDD or YYYY-MM-DD"),
    )


def _parse(row: dict[str, str], column: str, parser: Callable[[str], _T | None],
           where: str, accepted: str) -> _T | None:
    text = row.get(column) or ""
    if not text:
        return None
    value = parser(text)
    if value is None:
        raise ManifestError(f"{where}: {_quoted_in_part(text)} is not a valid {column} "
                            f"(accepted: {accepted}).{_shifted_hint(text)}")
    return value


# How much of a refused value a message quotes. A row that lacks a value puts its patient
# ID, accession number or path in the columns after the gap, and the message is printed
# and logged: a value longer than this is quoted by its start and its length.
_QUOTED_CHARACTERS = 3


def _quoted_in_part(text: str) -> str:
    if len(text) <= _QUOTED_CHARACTERS:
        return f"'{text}'"
    return f"'{text[:_QUOTED_CHARACTERS]}...' ({len(text)} characters, shown in part)"


def _shifted_hint(text: str) -> str:
    if len(text) <= _QUOTED_CHARACTERS:
        return ""
    return (" If the row lacks a value, the values after it are in the wrong columns: "
            "leave an empty value (two commas in a row) for each column it leaves blank.")


def _view(text: str) -> View | None:
    """The view names a DICOM View Position may hold; OTHER only when written as such,
    not for a name nobody knows (a typo would otherwise be stored as OTHER)."""
    view = View.parse(text)
    return view if view is not View.OTHER or text.strip().upper() == View.OTHER else None


def _date(text: str) -> str | None:
    value = study_date(text)
    try:
        return value if value and datetime.strptime(value, "%Y%m%d") else None
    except ValueError:  # 20241301
        return None


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
