"""Per-exam reports: one exam to a chosen file, or every exam of a batch to the report dir;
and one image's report (``mammo report image``), by the same loader and writers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select, union
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.clock import Clocks
from shared.db.schema import DuplicateSubmission, ExamResult, Image, Prediction, Study
from shared.extras import REPORTS, installed
from shared.read_alone import failed_alone, scored_alone
from shared.reports.exam_data import ExamReport, ViewResult, load_exam_report, load_image_report
from shared.reports.exports import DISCLAIMER, write_json
from shared.reports.worklist import (
    burned_in_flag,
    exam_pdf_path,
    image_pdf_path,
    pdf_is_older,
    written_before,
)
from shared.timeutil import as_utc

EXAM_FORMATS = ("pdf", "json")
IMAGE_FORMATS = EXAM_FORMATS
_RESULT_FIELDS = ("version", "status", "reason", "label", "p_malignant", "suspicion",
                  "per_breast", "views", "missing_views", "flags", "n_images", "n_failed",
                  "created_at")


def exam_json(report: ExamReport) -> dict[str, Any]:
    """The report's content without pixels (heatmaps stay in the database and the PDF)."""
    result = report.result
    return {
        "disclaimer": DISCLAIMER, "study_uid": report.study_uid,
        "patient_pseudonym": report.patient_pseudonym,
        "accession_number": report.accession_number, "study_date": report.study_date,
        # SQLite hands created_at back naive; it is UTC, like every stored time.
        "exam": ({k: getattr(result, k) for k in _RESULT_FIELDS}
                 | {"created_at": as_utc(result.created_at)}) if result else None,
        "views": [_view_json(view) for view in report.views],
        "models": [asdict(m) for m in report.models],
        # No result yet, nothing in flight: when the exam stops waiting for missing views.
        "awaits_missing_views_until": report.due_at,
    }


def _view_json(view: ViewResult) -> dict[str, Any]:
    # File paths stay out, as in every export: scanners put patient names in them.
    return ({k: v for k, v in asdict(view).items()
             if k not in ("heatmap_png", "source", "archived_path")}
            | {"view_key": view.view_key, "heatmap": view.heatmap_png is not None})


def image_json(report: ExamReport) -> dict[str, Any]:
    """An image report's content (``load_image_report``), as ``exam_json`` gives an exam's:
    the view, its models, the exam it is part of (null: read alone) and its flags."""
    view = report.views[0]
    return {
        "disclaimer": DISCLAIMER, "image_id": report.image_id,
        "read_alone": report.read_alone, "study_uid": report.study_uid,
        "patient_pseudonym": report.patient_pseudonym,
        "accession_number": report.accession_number, "study_date": report.study_date,
        # The exam report reads this view against the other breast; this one does not.
        "exam_report": None if report.read_alone else f"mammo report exam {report.study_uid}",
        "view": _view_json(view),
        "models": [asdict(m) for m in report.models],
        # As the PDF lists them: read alone or why it failed, burned-in text, input notes.
        "flags": [*report.read_alone_flags,
                  *filter(None, [burned_in_flag([view.image_id]
                                                if view.burned_in_annotation else [])]),
                  *report.input_note_flags],
    }


def write_exam_report(session: Session, study_uid: str, path: Path, fmt: str,
                      settings: Settings) -> Path:
    report = load_exam_report(session, study_uid, timeout_s=settings.exam_timeout_s)
    return _write(report, path, fmt, settings)


def write_image_report(session: Session, image_id: int, path: Path, fmt: str,
                       settings: Settings) -> Path:
    """One image's report, whether it belongs to an exam or was read alone."""
    return _write(load_image_report(session, image_id), path, fmt, settings)


def _write(report: ExamReport, path: Path, fmt: str, settings: Settings) -> Path:
    if fmt == "json":
        return write_json(image_json(report) if report.is_image else exam_json(report), path)
    if fmt != "pdf":
        raise ValueError(f"unknown exam report format {fmt!r}; expected one of {EXAM_FORMATS}")
    with installed(REPORTS, needed_for="A PDF report"):
        from shared.reports.exam_pdf import write_exam_pdf

    return write_exam_pdf(report, path, max_pixels=settings.max_image_pixels)


def write_batch_exam_pdfs(session: Session, batch_id: int, settings: Settings, *,
                          progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """A PDF per exam of the batch, and per image of it read alone (scored or failed
    outside any exam), at the path the worklist points to; returns every path.
    ``progress(written, reports)`` is called before the first and after each report: a
    night's PDFs take minutes, one after another.

    The batch's exams and images include those of the files it sent again (copies): a run
    resumed after an interruption is all copies, and its exams are still the ones it was
    given. A PDF already written since the current result is kept: a re-run completes the
    PDFs an interrupted one left unwritten without decoding every image again.
    """
    # A union rather than an OR: each side reads its own index.
    in_batch = Image.id.in_(union(
        select(Image.id).where(Image.batch_id == batch_id),
        select(DuplicateSubmission.image_id).where(DuplicateSubmission.batch_id == batch_id)))
    current = and_(ExamResult.study_id == Study.id, ExamResult.superseded_at.is_(None))
    exams = session.execute(
        select(Study.study_uid, ExamResult).outerjoin(ExamResult, current)
        .where(Study.id.in_(select(Image.study_id).where(in_batch))).order_by(Study.id)).all()
    # An image read alone is listed by the worklist as an exam of its own, with its own PDF.
    alone = [(image_id, created_at) for image_id, created_at in session.execute(
        scored_alone(Image.id, Prediction.created_at).where(in_batch).order_by(Image.id))]
    alone += [(image_id, finished_at) for image_id, finished_at in session.execute(
        failed_alone(Image.id, Image.finished_at).where(in_batch).order_by(Image.id))]
    total = len(exams) + len(alone)
    clocks = Clocks.read(session)  # PDF times against results' (``written_before``)
    paths: list[Path] = []
    for uid, result in exams:
        if progress:
            progress(len(paths), total)
        path = exam_pdf_path(settings.report_dir, uid)
        if not _is_current(path, result, clocks):
            write_exam_report(session, uid, path, "pdf", settings)
        paths.append(path)
    for image_id, result_at in alone:
        if progress:
            progress(len(paths), total)
        path = image_pdf_path(settings.report_dir, image_id)
        if not (path.is_file() and not written_before(path, result_at, clocks)):
            write_image_report(session, image_id, path, "pdf", settings)
        paths.append(path)
    if progress:
        progress(len(paths), total)
    return paths


def _is_current(pdf: Path, result: ExamResult | None, clocks: Clocks) -> bool:
    """Written since the exam's current result (an exam with none is always written): the
    worklist's own test, so the PDFs kept are exactly those it does not flag as stale."""
    return result is not None and pdf.is_file() and not pdf_is_older(pdf, result, clocks)
