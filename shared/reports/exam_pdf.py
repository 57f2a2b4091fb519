"""One PDF per exam, for the record: identification, scores, views with heatmaps, model,
timestamps, flags, and the decision-support statement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reportlab.lib.units import mm
from reportlab.platypus import Flowable, KeepTogether, Spacer, Table, TableStyle

from shared.imaging.identity import current_location
from shared.imaging.model_input import ModelInputSource
from shared.reports.exam_data import ExamReport, ViewResult
from shared.reports.pdf_parts import (
    BODY,
    HEADING,
    PAGE_WIDTH,
    SMALL,
    TITLE,
    VIEW_TITLE,
    WARNING,
    build_pdf,
    disclaimer,
    para,
    png_image,
    table,
)
from shared.reports.view_images import thumbnail
from shared.synthetic import SYNTHETIC_LABEL

_CELL = PAGE_WIDTH / 2 - 4 * mm
_THUMB = 46 * mm  # four views (a standard exam) fit on one page
_HEATMAP_NOTE = (
    "Each view is shown as the model saw it (chest wall on the left, cropped to the breast, "
    "contrast-stretched), with the model's per-location P(abnormal) overlaid inside the "
    "breast: blue is low, red is high. A coloured area is where the model looked, not a "
    "finding.")


def _date(value: str | None) -> str | None:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _identification(report: ExamReport) -> Table:
    return table(None, [
        ("patient (pseudonym)", report.patient_pseudonym or "none recorded"),
        ("accession number", report.accession_number),
        ("study date", _date(report.study_date)),
        ("StudyInstanceUID", report.study_uid),
    ], widths=(45 * mm, PAGE_WIDTH - 45 * mm))


def _exam_result(report: ExamReport) -> list[Flowable]:
    result = report.result
    if result is None:
        return [para("No exam result yet: views are still being processed, or missing views "
                     "are awaited until the exam timeout. Per-view results are below.")]
    rows: list[tuple[Any, ...]] = [
        ("exam", result.suspicion, result.label, result.p_malignant, ", ".join(result.views))]
    for side, name in (("L", "left breast"), ("R", "right breast")):
        breast = result.per_breast.get(side)
        if isinstance(breast, dict):
            rows.append((name, breast.get("suspicion"), breast.get("label"),
                         breast.get("p_malignant"), ", ".join(breast.get("views", []))))
        else:
            rows.append((name, None, "no scored view", None, ""))
    paired = [name for side, name in (("L", "left"), ("R", "right"))
              if isinstance(b := result.per_breast.get(side), dict) and b.get("bilateral")]
    notes = [para(f"The {' and '.join(paired)} breast's views were read against the other "
                  "breast's same view, so the breast and exam scores can differ from the "
                  "per-view scores below.")] if paired else []
    return [
        para(f"Status: {result.status} (version {result.version}, computed "
             f"{result.created_at:%Y-%m-%d %H:%M} UTC)"),
        table(("", "suspicion (1-10)", "most suspicious view's class", "max P(malignant)",
               "views scored"), rows),
        *notes,
    ]


def _flags(report: ExamReport) -> list[Flowable]:
    flags = list(report.result.flags) if report.result else []
    flags += [f"{v.view_key} (image {v.image_id}) failed: {v.error_code}: {v.error_message}"
              for v in report.views if v.state == "failed"]
    flags += [f"{v.view_key} (image {v.image_id}) is still {v.state}"
              for v in report.views if v.state in ("queued", "processing")]
    return [para(f"- {f}") for f in flags] or [para("None.")]


def _view_cell(view: ViewResult, *, max_pixels: int) -> list[Flowable]:
    cell: list[Flowable] = [para(f"{view.title}  (image {view.image_id})", VIEW_TITLE)]
    if view.state != "done" or view.model is None or view.probabilities is None:
        reason = f"{view.error_code}: {view.error_message}" if view.error_code else "no result yet"
        return [*cell, para(f"{view.state}: {reason}")]
    source = ModelInputSource(current_location(view.source, view.archived_path),
                              view.laterality, view.spacing_mm, view.model.input_size,
                              max_pixels)
    thumb = thumbnail(source, view.heatmap_png, view.model.patch, view.identity)
    if thumb is None:
        cell.append(para("image not available; no heatmap stored"))
    else:
        cell.append(png_image(thumb.png, _THUMB))
        if thumb.image_missing is not None:
            cell.append(para(f"image not available ({thumb.image_missing}): heatmap only",
                             SMALL))
        if not thumb.heatmap_available:
            cell.append(para("no heatmap stored for this prediction", SMALL))
    probs = view.probabilities
    cell.append(para("class probabilities", SMALL))
    cell.append(table(list(probs), [list(probs.values())],
                      widths=[22 * mm] * len(probs)))
    cell.append(para(f"suspicion {view.suspicion} / 10; most probable class: {view.label}",
                     SMALL))
    return cell


def _views(report: ExamReport, max_pixels: int) -> Table:
    cells = [_view_cell(v, max_pixels=max_pixels) for v in report.views]
    rows = [cells[i:i + 2] + [[]] * (2 - len(cells[i:i + 2])) for i in range(0, len(cells), 2)]
    grid = Table(rows or [[para("No images.")]], colWidths=[_CELL + 4 * mm] * 2 if rows else None,
                 hAlign="LEFT")
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return grid


def _models(report: ExamReport) -> Table:
    return table(("model", "version", "sha256", "preprocessing"),
                 [(m.name, m.version, m.sha256, m.preprocessing_version) for m in report.models],
                 # 64 hex digits at 7.5 pt take up to 108 mm plus the cell's padding: at 110
                 # mm a digit-heavy hash wrapped its last character onto a second line.
                 widths=(24 * mm, 14 * mm, 118 * mm, 24 * mm))


def _timestamps(report: ExamReport) -> Table:
    return table(("view", "image", "submitted", "finished", "predicted"),
                 [(v.view_key, v.image_id, v.submitted_at, v.finished_at, v.predicted_at)
                  for v in report.views])


def write_exam_pdf(report: ExamReport, path: Path, *, max_pixels: int) -> Path:
    story: list[Flowable] = [
        para("Mammography exam report: decision support", TITLE), disclaimer(),
        *([para(f"{SYNTHETIC_LABEL}: these images were generated by software to test the "
                "pipeline; the results describe no one.", WARNING)] if report.synthetic else []),
        _identification(report),
        para("Exam result", HEADING), *_exam_result(report),
        para("Flags", HEADING), *_flags(report),
        para("Views", HEADING), para(_HEATMAP_NOTE, SMALL), Spacer(1, 2 * mm),
        _views(report, max_pixels),
        KeepTogether([para("Model", HEADING), _models(report)]),
        # The closing statement stays with the table above it, never alone on a last page.
        KeepTogether([
            para("Processing times (UTC)", HEADING), _timestamps(report),
            Spacer(1, 4 * mm), para("Probabilities, not verdicts: the scores above rank exams "
                                    "for reading order and must not replace a reader.", BODY),
            disclaimer()]),
    ]
    return build_pdf(path, f"Exam report {report.study_uid}", story)
