"""What the batch summary's tables hold, shared by its PDF and HTML renderings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.reports.batch_data import BatchSummary

FAILURE_COLUMNS = ("image_id", "file", "error_code", "error_message")
WORKLIST_COLUMNS = ("rank", "study_uid", "suspicion", "left", "right", "status", "flags",
                    "report")


def cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # Probabilities keep three decimals; times and rates need no more than one.
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def batch_title(summary: BatchSummary) -> str:
    name = f" ({summary.name})" if summary.name else ""
    return f"Batch {summary.batch_id}{name}: summary"


def overview_rows(summary: BatchSummary) -> list[tuple[str, Any]]:
    return [
        ("images", summary.total),
        # Every report names the model behind its probabilities (PRODUCT.md).
        ("model", ", ".join(summary.models) or "none yet"),
        ("created", summary.created_at),
        ("finished", summary.finished_at),
        ("throughput (images / minute, creation to last finish)", summary.images_per_minute),
        ("exams with a result", len(summary.worklist)),
        ("failed images", len(summary.failures)),
    ]


def stage_rows(summary: BatchSummary) -> list[tuple[str, float, float]]:
    return [(s.stage, s.median_ms, s.mean_ms) for s in summary.stage_times]


def _breast(row: dict[str, Any], side: str) -> str:
    breast = row["per_breast"].get(side)
    if not breast:
        return "-"
    return f"{breast.get('suspicion')} ({breast.get('label')})"


def worklist_table_row(row: dict[str, Any]) -> list[Any]:
    return [row["rank"], row["study_uid"], row["suspicion"], _breast(row, "L"),
            _breast(row, "R"), row["status"], "; ".join(row["flags"]) or "-",
            row["report_path"] or "-"]
