"""Machine-readable batch exports (CSV and JSON), written beside the human reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.formatting import json_text, write_csv_rows
from shared.queries import RESULT_KEYS
from shared.reports.output import report_file

DISCLAIMER = ("Decision support only, not a diagnosis: probabilities from a machine-learning "
              "model, to be weighed by a qualified reader.")


def write_json(data: Any, path: Path) -> Path:
    with report_file(path) as temporary:
        # Times as ISO 8601 with +00:00, like every listing's JSON.
        temporary.write_text(json_text(data) + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path,
              columns: Sequence[str] = RESULT_KEYS) -> Path:
    with report_file(path) as temporary, temporary.open("w", newline="",
                                                        encoding="utf-8") as fh:
        write_csv_rows(fh, rows, columns)
    return path

