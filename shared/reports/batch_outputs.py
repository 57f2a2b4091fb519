"""The reports ``mammo run`` and ``mammo demo`` leave in the report directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.exams import refresh_due_exams
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_summary import batch_report_path, write_summary
from shared.reports.exam_reports import write_batch_exam_pdfs

EXPORT_FORMATS = ("json", "csv")


@dataclass(frozen=True)
class BatchDocuments:
    summary: Path  # the HTML summary, to open in a browser
    exports: list[Path]  # batch-N.json and batch-N.csv
    exams: list[Path]  # one PDF per exam, and per image read alone (image-N.pdf)


def write_batch_documents(session: Session, batch_id: int, settings: Settings, *,
                          progress: Callable[[int, int], None] | None = None,
                          ) -> BatchDocuments:
    """The batch's HTML summary, its JSON and CSV exports, and one PDF per exam (and per
    image read alone) under ``settings.report_dir``; all three batch files from one
    summary, so they agree.

    The PDFs come first so that the summary's worklist can point at them; ``progress``
    follows them (written, PDFs), the long part.
    """
    refresh_due_exams(session, timeout_s=settings.exam_timeout_s)
    exams = write_batch_exam_pdfs(session, batch_id, settings, progress=progress)
    summary = collect_batch_summary(session, batch_id, report_dir=settings.report_dir,
                                    zone=settings.site_zone)
    html = write_summary(summary, batch_report_path(settings, batch_id, "html"), "html")
    exports = [write_summary(summary, batch_report_path(settings, batch_id, fmt), fmt)
               for fmt in EXPORT_FORMATS]
    return BatchDocuments(html, exports, exams)
