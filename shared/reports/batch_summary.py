"""The batch summary in every format, behind two stable entry points.

``render_batch_html`` gives the self-contained HTML page (for an email body or attachment);
``write_batch_report`` writes the summary as PDF, HTML, CSV (one row per image) or JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.extras import REPORTS, installed
from shared.reports.batch_data import BatchSummary, collect_batch_summary
from shared.reports.exports import DISCLAIMER, write_csv, write_json
from shared.reports.output import report_file

BATCH_FORMATS = ("pdf", "html", "csv", "json")
HTML_NEEDS = "An HTML report (its charts)"

__all__ = ["BATCH_FORMATS", "batch_report_path", "render_batch_html", "write_batch_report",
           "write_summary"]


def _summary(session: Session, batch_id: int, settings: Settings) -> BatchSummary:
    return collect_batch_summary(session, batch_id, report_dir=settings.report_dir,
                                 zone=settings.site_zone)


def render_batch_html(session: Session, batch_id: int, *, settings: Settings) -> str:
    with installed(REPORTS, needed_for=HTML_NEEDS):
        from shared.reports.batch_html import render_summary_html

    return render_summary_html(_summary(session, batch_id, settings))


def _write_pdf(summary: BatchSummary, path: Path) -> Path:
    with installed(REPORTS, needed_for="A PDF report"):
        from shared.reports.batch_pdf import write_summary_pdf

    return write_summary_pdf(summary, path)


def _write_html(summary: BatchSummary, path: Path) -> Path:
    with installed(REPORTS, needed_for=HTML_NEEDS):
        from shared.reports.batch_html import render_summary_html

    html = render_summary_html(summary)
    with report_file(path) as temporary:
        temporary.write_text(html, encoding="utf-8")
    return path


def _write_csv(summary: BatchSummary, path: Path) -> Path:
    return write_csv(summary.results, path)


def _write_json(summary: BatchSummary, path: Path) -> Path:
    return write_json({"disclaimer": DISCLAIMER, **summary.as_json()}, path)


_WRITERS: dict[str, Callable[[BatchSummary, Path], Path]] = {
    "pdf": _write_pdf, "html": _write_html, "csv": _write_csv, "json": _write_json,
}


def batch_report_path(settings: Settings, batch_id: int, fmt: str) -> Path:
    """The default file name, one for `mammo run` and `mammo report batch`: regenerating an
    export refreshes the file scripts read instead of leaving it stale beside a new one."""
    suffix = "-summary" if fmt in ("pdf", "html") else ""
    return settings.report_dir / f"batch-{batch_id}{suffix}.{fmt}"


def write_summary(summary: BatchSummary, path: Path, fmt: str) -> Path:
    """Write ``summary`` to ``path`` as ``fmt`` (one of BATCH_FORMATS): the one writer of
    every batch file, so `mammo run`'s batch-N.json is what `mammo report batch` writes."""
    if fmt not in _WRITERS:
        raise ValueError(f"unknown batch report format {fmt!r}; expected one of {BATCH_FORMATS}")
    return _WRITERS[fmt](summary, path)


def write_batch_report(session: Session, batch_id: int, path: Path, fmt: str,
                       settings: Settings) -> Path:
    """Write batch ``batch_id``'s summary to ``path`` as ``fmt`` (one of BATCH_FORMATS)."""
    return write_summary(_summary(session, batch_id, settings), path, fmt)
