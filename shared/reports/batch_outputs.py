"""The human-readable reports ``mammo run`` and ``mammo demo`` leave beside their exports."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.exams import refresh_due_exams
from shared.reports.batch_summary import batch_report_path, write_batch_report
from shared.reports.exam_reports import write_batch_exam_pdfs


def write_batch_documents(session: Session, batch_id: int,
                          settings: Settings) -> tuple[Path, list[Path]]:
    """(the batch's HTML summary, one PDF per exam), under ``settings.report_dir``.

    Exam PDFs come first so that the summary's worklist can point at them.
    """
    refresh_due_exams(session, timeout_s=settings.exam_timeout_s)
    exams = write_batch_exam_pdfs(session, batch_id, settings)
    html = write_batch_report(session, batch_id, batch_report_path(settings, batch_id, "html"),
                              "html", settings)
    return html, exams
