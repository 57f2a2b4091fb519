"""Reading a manifest CSV strictly: the rows as written, the header's columns checked.

Shared by `mammo submit --manifest` (``producer.manifest``) and the labelled data sets of
`mammo train`/`evaluate` (``models.datasets``), so both accept and refuse the same files.
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

from shared.errors import ManifestError

# Every column a manifest may have; the data sets of train/evaluate read a subset of them.
COLUMNS = ("path", "patient_id", "laterality", "view", "study_id", "accession", "study_date",
           "label", "pixel_spacing_mm")


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


def check_columns(path: Path, fields: list[str], rows: list[tuple[int, list[str]]]) -> None:
    """Refuse a column that is not a manifest column (its values would be dropped without
    a word), or one named twice (only one would be read)."""
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
