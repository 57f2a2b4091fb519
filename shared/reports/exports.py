"""Machine-readable batch exports (CSV and JSON), written beside the human reports."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.queries import RESULT_KEYS

DISCLAIMER = ("Decision support only, not a diagnosis: probabilities from a machine-learning "
              "model, to be weighed by a qualified reader.")


def write_batch_exports(rows: Sequence[Mapping[str, Any]], directory: Path,
                        batch_id: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"batch-{batch_id}.json"
    csv_path = directory / f"batch-{batch_id}.csv"
    json_path.write_text(json.dumps(
        {"batch_id": batch_id, "disclaimer": DISCLAIMER, "results": list(rows)},
        indent=2, default=str) + "\n", encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RESULT_KEYS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [json_path, csv_path]
