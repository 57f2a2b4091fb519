"""Machine-readable batch exports (CSV and JSON), written beside the human reports."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.formatting import json_text, write_csv_rows, write_json_rows
from shared.queries import RESULT_KEYS
from shared.reports.output import report_file

DISCLAIMER = ("Decision support only, not a diagnosis: probabilities from a machine-learning "
              "model, to be weighed by a qualified reader.")


def write_json(data: Any, path: Path) -> Path:
    with report_file(path) as temporary:
        # Times as ISO 8601 with +00:00, like every listing's JSON.
        temporary.write_text(json_text(data) + "\n", encoding="utf-8")
    return path


def write_json_listing(path: Path, head: Callable[[], dict[str, Any]], key: str,
                       rows: Iterable[Mapping[str, Any]]) -> Path:
    """``write_json`` of ``{**head(), key: list(rows)}``, the same bytes, with ``rows``
    written as they come (a generator over a streamed query: memory stays flat), to a
    spool file beside ``path`` first; ``head`` is called once they are all written, so it
    may say what they held (the models a worklist names)."""
    with report_file(path) as temporary:
        spool = temporary.with_name(f"{temporary.name}.rows")
        try:
            with spool.open("w", encoding="utf-8") as fh:
                write_json_rows(fh, rows, depth=1)
            # The object with a null in the rows' place, the last key; the rows go there.
            text = json_text({**head(), key: None})
            tail = "null\n}"
            if not text.endswith(tail):  # a key in head() that comes after ``key``
                raise ValueError(f"{key!r} must be the object's last key")
            with temporary.open("w", encoding="utf-8") as out, \
                    spool.open(encoding="utf-8") as fh:
                out.write(text[:-len(tail)])
                shutil.copyfileobj(fh, out)
                out.write("\n}\n")
        finally:
            spool.unlink(missing_ok=True)
    return path


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path,
              columns: Sequence[str] = RESULT_KEYS) -> Path:
    with report_file(path) as temporary, temporary.open("w", newline="",
                                                        encoding="utf-8") as fh:
        write_csv_rows(fh, rows, columns)
    return path

