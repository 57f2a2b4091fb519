"""What the batch summary's tables hold, shared by its PDF and HTML renderings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.reports.batch_data import REPORT_ROWS, BatchSummary
from shared.timeutil import utc_text

FAILURE_COLUMNS = ("image_id", "file", "error_code", "error_message")
FAILURE_REASON_COLUMNS = ("error_code", "images", "example message")
NO_STAGE_TIMES = "No image was scored, so there are no stage times."
# "study_uid" is the exam's UID, or the image's id and file where it was read alone (no
# exam); left and right give each breast's score with its probabilities, P(malignant) the
# row's (PRODUCT.md: probabilities, not verdicts), model the model(s) behind them.
WORKLIST_COLUMNS = ("rank", "study_uid", "suspicion", "P(malignant)", "left", "right",
                    "model", "status", "flags", "report")


def cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # Probabilities keep three decimals; times and rates need no more than one.
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, datetime):
        return utc_text(value)
    return str(value)


def synthetic_note(synthetic: int, total: int) -> str | None:
    """What a report says of its synthetic (generated) images: that it describes no patient
    only when every image is synthetic; a real image beside them is a patient's."""
    if not synthetic:
        return None
    if synthetic >= total:
        return "SYNTHETIC TEST DATA, not patients"
    return f"{synthetic} of {total} images are synthetic test data"


def batch_title(summary: BatchSummary) -> str:
    name = f" ({summary.name})" if summary.name else ""
    note = synthetic_note(summary.synthetic_images, summary.total)
    return f"Batch {summary.batch_id}{name}: summary{f' - {note}' if note else ''}"


def overview_rows(summary: BatchSummary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        # A day batch's UTC times read against the site's day, where it was cut.
        *([("day covered", summary.period)] if summary.period else []),
        ("images", summary.total),
        # Every report names the model behind its probabilities (PRODUCT.md).
        ("model", ", ".join(summary.models)
         or ("none (no image scored)" if summary.finished_at else "none yet")),
        ("created", summary.created_at),
        ("finished", summary.finished_at),
        # `mammo status`'s figure: over all its work once finished; while images remain,
        # over its last 5 minutes (0 when nothing was scored in them).
        ("images scored / minute (as mammo status: all its work once finished, "
         "its last 5 minutes before)", summary.images_per_minute),
        ("exams with a result", summary.exams),
        *([("images read alone (no exam: listed to read first on their own score, or "
            "as failed)", summary.read_alone)] if summary.read_alone else []),
        ("failed images", len(summary.failures)),
    ]
    if summary.duplicates:
        rows.append(("copies of images already known (their results are the originals')",
                     summary.duplicates))
    if summary.synthetic_images:
        rows.append(("synthetic images (generated test data, not patients)",
                     summary.synthetic_images))
    return rows


def failures_heading(summary: BatchSummary) -> str:
    return f"Failures ({len(summary.failures)})"


def failure_reason_rows(summary: BatchSummary) -> list[tuple[Any, ...]]:
    return [(r.error_code, r.images, r.example) for r in summary.failure_reasons]


def failure_rows(summary: BatchSummary) -> list[list[Any]]:
    """The first REPORT_ROWS failed images: the reasons above count them all, and a night
    where thousands failed must not print one line per image (failures_note says where the
    rest are)."""
    return [[f[k] for k in FAILURE_COLUMNS] for f in summary.failures[:REPORT_ROWS]]


def failures_note(summary: BatchSummary) -> str | None:
    total = len(summary.failures)
    if total <= REPORT_ROWS:
        return None
    return (f"The first {REPORT_ROWS} of {total} failed images; "
            f"`mammo results --batch {summary.batch_id} --state failed` lists all.")


def worklist_heading(summary: BatchSummary) -> str:
    shown, listed = len(summary.worklist), summary.exams + summary.read_alone
    more = f" (the first {shown} of {listed})" if shown < listed else ""
    alone = " and images read alone (no exam)" if summary.read_alone else ""
    return f"Read first: exams{alone} by suspicion{more}"


def no_worklist_text(summary: BatchSummary) -> str:
    if summary.duplicates and not summary.total:
        return (f"No exam results in this batch: its {summary.duplicates} file(s) were copies "
                "of images already known (mammo results --batch shows their originals).")
    return "No exam results in this batch."


def stage_rows(summary: BatchSummary) -> list[tuple[str, float, float]]:
    return [(s.stage, s.median_ms, s.mean_ms) for s in summary.stage_times]


def _breast(row: dict[str, Any], side: str) -> str:
    """A breast's score and the probabilities behind it (no class verdict)."""
    breast = row["per_breast"].get(side)
    if not breast:
        return "-"
    return (f"{breast.get('suspicion')}; P(malignant) {cell_text(breast.get('p_malignant'))}"
            f"; P(abnormal) {cell_text(breast.get('p_abnormal'))}")


def row_identity(row: dict[str, Any]) -> str:
    """What names the row: its exam's study UID, or the image read alone and its file."""
    if row["study_uid"] is not None:
        return str(row["study_uid"])
    read = "read alone" if row["suspicion"] is not None else "not scored"  # it failed
    return f"image {row.get('image_id')}, {read} (no exam): {row.get('source')}"


def worklist_table_row(row: dict[str, Any]) -> list[Any]:
    return [row["rank"], row_identity(row), row["suspicion"], row.get("p_malignant"),
            _breast(row, "L"), _breast(row, "R"), ", ".join(row.get("models") or []) or "-",
            row["status"], "; ".join(row["flags"]) or "-", row["report_path"] or "-"]
