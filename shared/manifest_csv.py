"""Reading a manifest CSV strictly: the rows as written, the header's columns checked.

Shared by `mammo submit --manifest` (``producer.manifest``) and the labelled data sets of
`mammo train`/`evaluate` (``models.datasets``), so both accept and refuse the same files.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ManifestError

# Every column a manifest may have; the data sets of train/evaluate read a subset of them.
COLUMNS = ("path", "patient_id", "laterality", "view", "study_id", "accession", "study_date",
           "label", "pixel_spacing_mm")
_SEPARATORS = re.compile(r"[;\t]")


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(lower-cased column names, [(line the row is on, its values)]), blank lines skipped.

    Strict: Python's csv otherwise reads an unclosed quote as a value running to the end of
    the file, taking every later row with it.
    """
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            for values in reader:
                # A row of empty values (",,,,") is what spreadsheets export for a
                # formatted blank row: a blank line, as is nothing at all.
                if any(value.strip() for value in values):
                    _check_one_line(path, start, reader.line_num, values, rows)
                    rows.append((start, values))
                start = reader.line_num + 1
    except csv.Error as exc:
        raise ManifestError(
            f"{path}, line {start}: not valid CSV ({exc}): a double quote opened on this "
            "line is not closed, or a closing quote is followed by more text. Put double "
            "quotes around a whole value only, and write a quote inside one twice.") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"The manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save "
            "it as UTF-8 (in Excel, 'CSV UTF-8 (comma delimited)').") from exc
    except OSError as exc:
        raise ManifestError(f"The manifest {path} could not be read: {exc}.") from exc
    header = rows[0][1] if rows else []
    return [name.strip().lower() for name in header], rows[1:]


def _check_one_line(path: Path, start: int, end: int, values: list[str],
                    rows: list[tuple[int, list[str]]]) -> None:
    where = f"{path}, line {start}"
    if end > start:  # no manifest value holds a line break: a quote closed lines later
        raise ManifestError(
            f"{where}: a double quote opened on this line is closed only on line {end}, "
            "making one value of the lines between; close the quote on its own line.")
    extra = values[len(rows[0][1]):] if rows else []
    if any(value.strip() for value in extra):  # trailing empty ones: a spreadsheet's commas
        raise ManifestError(
            f"{where}: {len(extra)} more value(s) than the header row has columns; a value "
            "holding a comma must be in double quotes.")


def header_found(fields: Sequence[str]) -> str:
    """The header row as a message may show it: its names, or, when it names no manifest
    column at all, that it is missing. A manifest without a header row has a patient's
    values in its first row, and messages are printed and logged."""
    names = [part.strip() for field in fields for part in _SEPARATORS.split(field)]
    if any(name in COLUMNS for name in names):
        return f"columns found: {', '.join(fields)}"
    return ("its first row names none of the manifest's columns, so it has no header row: "
            "add one")


def delimiter_hint(fields: Sequence[str]) -> str:
    """How to fix a manifest whose values are separated by something other than commas."""
    for mark, said in ((";", "';'"), ("\t", "tabs")):
        if any(mark in field for field in fields):
            return (f"; its values are separated by {said}: save it as CSV with commas (in "
                    "Excel, 'CSV UTF-8 (comma delimited)').")
    return "."


def check_columns(path: Path, fields: list[str], rows: list[tuple[int, list[str]]]) -> None:
    """Refuse a header row that names no manifest column (no header row at all), a column
    that is not a manifest column (its values would be dropped without a word), or one
    named twice (only one would be read)."""
    if fields and not any(name in COLUMNS for name in fields):
        raise ManifestError(f"{path}: {header_found(fields)} (expected "
                            f"{', '.join(COLUMNS)}){delimiter_hint(fields)}")
    for index, name in enumerate(fields):
        if not name:
            # A nameless column left empty is what spreadsheets export after a stray cell.
            if any(index < len(values) and values[index].strip() for _, values in rows):
                raise ManifestError(
                    f"{path}: column {index + 1} has values but no name in the header row: "
                    f"name it (one of {', '.join(COLUMNS)}) or delete it.")
            continue
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ManifestError(
                f"{path}: the column '{name}' is not a manifest column{hint}, and its "
                f"values would be ignored: rename it to one of {', '.join(COLUMNS)}, or "
                "delete it.")
        if fields.count(name) > 1:
            raise ManifestError(
                f"{path}: the column '{name}' is in the header row twice: keep one.")
