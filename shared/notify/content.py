"""The words and numbers of each notification, read from the database.

Exam alerts name the exam by study UID, accession number and patient pseudonym, and give the
scores: nothing else from the DICOM header ever reaches a message. An image scored outside
any exam (``shared.read_alone``) is alerted as an exam of its own, named by its image id,
batch and file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from shared.db.lifecycle import priorities_of, study_priority
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction, Study
from shared.enums import ImageState, Priority
from shared.exams import read_first_suspicion
from shared.notify.message import Attachment, Event, Notice, delivery_key
from shared.notify.records import summarised
from shared.queries import batch_status
from shared.read_alone import READ_ALONE_FLAG, model_label, scored_alone
from shared.reports.batch_data import synthetic_images
from shared.reports.exports import DISCLAIMER
from shared.reports.layout import synthetic_note
from shared.synthetic import SYNTHETIC_MANUFACTURER

# Said in the subject and first in the text of an alert for a `mammo demo` exam.
SYNTHETIC_NOTE = "SYNTHETIC TEST DATA - not a patient"
# Said in the subject of an alert whose exam (or image) was submitted urgent, and why in its
# text: the worklist's ``priority``, so a reader scanning the inbox sees the request too.
URGENT_NOTE = "URGENT"
URGENT_LINE = ("Priority: urgent (submitted with --priority urgent: someone asked for it to "
               "be read at once)")


def _subject(synthetic: bool, priority: Priority, what: str) -> str:
    return "".join(["[mammo] ", SYNTHETIC_NOTE + ": " if synthetic else "",
                    URGENT_NOTE + ": " if priority is Priority.URGENT else "", what])


def _class_counts(session: Session, batch_id: int) -> dict[str, int]:
    # Each of the batch's done images' latest prediction, found per image (a correlated
    # max(id) on ix_predictions_image_id_id) from the batch's images (ix_images_batch_state):
    # bounded by the batch. The grouped "max id per image" over every prediction ever stored
    # that it replaces took 1.1-1.7 s per notice at a year's history, whatever the batch's
    # size, and a plain IN (grouped max of the batch) is planned as a scan of all
    # predictions before PostgreSQL's first ANALYZE.
    newest = aliased(Prediction)
    latest = (select(func.max(newest.id)).where(newest.image_id == Image.id)
              .scalar_subquery())
    stmt = (select(Prediction.label, func.count())
            .select_from(Image)
            .join(Prediction, Prediction.id == latest)
            .where(Image.batch_id == batch_id, Image.state == ImageState.DONE.value)
            .group_by(Prediction.label))
    return {str(label): int(n) for label, n in session.execute(stmt)}


def _failure_reasons(session: Session, batch_id: int) -> dict[str, int]:
    stmt = (select(Image.error_code, func.count())
            .where(Image.batch_id == batch_id, Image.state == ImageState.FAILED.value)
            .group_by(Image.error_code))
    return {str(code): int(n) for code, n in session.execute(stmt)}


def _lines(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    return [f"{title}:", *(f"  {key}: {n}" for key, n in sorted(counts.items()))]


def batch_notice(session: Session, batch_id: int, *, html: str | None,
                 report_path: Path | None) -> Notice | None:
    status = batch_status(session, batch_id)
    if status is None or not session.scalar(select(summarised(batch_id))):
        return None  # e.g. every file was already known: nothing new to tell (nor owed)
    by_class = _class_counts(session, batch_id)
    reasons = _failure_reasons(session, batch_id)
    failed = sum(reasons.values())
    # One line: a name registered before `--name` refused control characters (or through
    # another door) must not break the e-mail's Subject header.
    name = f" ({' '.join(status.name.split())})" if status.name else ""
    synthetic = synthetic_images(session, batch_id)
    # The report path as the recipient must look for it: the writer's working directory
    # means nothing in an inbox.
    report_path = report_path.resolve() if report_path else None
    # The subject says "synthetic" only when no image is a patient's (synthetic_note).
    all_synthetic = bool(synthetic) and synthetic >= status.total
    note = synthetic_note(synthetic, status.total)
    text = "\n".join([
        *([note, ""] if note else []),
        f"Batch {batch_id}{name} is complete: {status.total} images, "
        f"{status.counts.get('done', 0)} done, {failed} failed.",
        *([f"Warning: {status.mixed_models_warning}"] if status.mixed_models_warning else []),
        "",
        *_lines("Images by state", status.counts),
        *_lines("Images by predicted class", by_class),
        *_lines("Failures by reason", reasons),
        "",
        f"Batch report: {report_path}" if report_path else
        f"Batch report: `mammo report` or `mammo results --batch {batch_id}`",
        "",
        DISCLAIMER,
    ])
    payload: dict[str, Any] = {
        "batch_id": batch_id, "batch_name": status.name, "total": status.total,
        "by_state": status.counts, "by_class": by_class, "failed": failed,
        "failures_by_reason": reasons,
        "report_path": str(report_path) if report_path else None,
        "finished_at": status.finished_at.isoformat() if status.finished_at else None,
        "synthetic_images": synthetic, "models": status.models, "disclaimer": DISCLAIMER,
    }
    attachments = (Attachment(report_path.name if report_path else f"batch-{batch_id}.html",
                              html),) if html else ()
    return Notice(Event.BATCH_COMPLETE, f"batch:{batch_id}",
                  f"[mammo] {SYNTHETIC_NOTE + ': ' if all_synthetic else ''}"
                  f"Batch {batch_id}{name} complete: {failed} failed of {status.total}",
                  text, payload, attachments, batch_id=batch_id,
                  # Its name and creation time: a restored database's next batch reuses
                  # the id (the id too: SQLite stamps creation to the second).
                  delivery_key=delivery_key("batch", batch_id, status.name, status.created_at))


def _breast_lines(per_breast: dict[str, Any]) -> list[str]:
    lines = []
    for side, name in (("L", "left"), ("R", "right")):
        breast = per_breast.get(side)
        if breast:
            lines.append(f"  {name} breast: suspicion {breast.get('suspicion')}, "
                         f"P(malignant) {float(breast.get('p_malignant') or 0):.3f}, "
                         f"class {breast.get('label')}")
    return lines or ["  per breast: not available (laterality unknown)"]


def current_exam(session: Session, study_id: int) -> ExamResult | None:
    return session.execute(select(ExamResult).where(
        ExamResult.study_id == study_id, ExamResult.superseded_at.is_(None))).scalar_one_or_none()


def _synthetic(session: Session, study_id: int) -> bool:
    """Every image made by `mammo demo` / shared.synthetic (the exam report's test): one
    patient's image among them makes the exam a patient's."""
    kinds = set(session.execute(select(
        Image.manufacturer.is_not(None) & (Image.manufacturer == SYNTHETIC_MANUFACTURER))
        .where(Image.study_id == study_id).distinct()).scalars())
    return kinds == {True}


def exam_alert_notice(session: Session, study_id: int, threshold: int) -> Notice | None:
    """An alert for the study's current exam result, or None when it is below ``threshold``."""
    exam = current_exam(session, study_id)
    study = session.get(Study, study_id)
    rank = read_first_suspicion(exam) if exam is not None else None
    if exam is None or study is None or rank is None or rank < threshold:
        return None
    per_breast = {side: {k: b.get(k) for k in ("label", "suspicion", "p_malignant", "views")}
                  for side, b in (exam.per_breast or {}).items() if isinstance(b, dict)}
    synthetic = _synthetic(session, study_id)
    priority = study_priority(session, study_id)
    text = "\n".join([
        *([SYNTHETIC_NOTE, ""] if synthetic else []),
        *([URGENT_LINE, ""] if priority is Priority.URGENT else []),
        # The worklist's score (it ranks and prints the exam by it), then the exam's own.
        f"An exam was scored at suspicion {rank} of 10"
        + (f" by a breast's own views ({exam.suspicion} with the other breast's, which "
           "lowered it: read both)" if rank != exam.suspicion else "")
        + f" (alert threshold {threshold}). Please prioritise its reading.",
        "",
        f"Study UID: {study.study_uid}",
        f"Accession number: {study.accession_number or '-'}",
        f"Patient pseudonym: {study.patient_pseudonym or '-'}",
        f"Exam: {exam.status}; predicted class {exam.label}; "
        f"P(malignant) {float(exam.p_malignant or 0):.3f}",
        *_breast_lines(per_breast),
        *(f"Flag: {flag}" for flag in exam.flags or []),
        "",
        DISCLAIMER,
    ])
    payload: dict[str, Any] = {
        "study_uid": study.study_uid, "accession_number": study.accession_number,
        "patient_pseudonym": study.patient_pseudonym, "suspicion": rank,
        "exam_suspicion": exam.suspicion, "threshold": threshold, "label": exam.label,
        "p_malignant": exam.p_malignant,
        "exam_status": exam.status, "per_breast": per_breast, "flags": list(exam.flags or []),
        "priority": priority.value, "synthetic": synthetic, "disclaimer": DISCLAIMER,
    }
    return Notice(Event.EXAM_ALERT, f"study:{study_id}",
                  _subject(synthetic, priority, f"Suspicion {rank}/10 exam to read first "
                           f"(accession {study.accession_number or '-'})"),
                  text, payload, study_id=study_id,
                  # The exam's key, and when this database registered it: a key made of an
                  # accession number without a patient (``study_key``) is one site's only.
                  delivery_key=delivery_key("study", study.study_uid, study.created_at))


def image_alert_notice(session: Session, image_id: int, threshold: int) -> Notice | None:
    """An alert for an image scored outside any exam, on its current prediction; None when
    it is below ``threshold`` (or no longer an image alone, done)."""
    found = session.execute(scored_alone(Image, Prediction, ModelVersion.name,
                                         ModelVersion.version)
                            .where(Image.id == image_id)).first()
    if found is None or found[1].suspicion < threshold:
        return None
    image, prediction, name, version = found
    synthetic = image.manufacturer == SYNTHETIC_MANUFACTURER
    priority = priorities_of(session, [image.id])[image.id]
    # The file's name, as the batch summary names its files: not its folders.
    file = Path(image.source).name
    side = {"L": "left", "R": "right"}.get(image.laterality or "", "laterality unknown")
    text = "\n".join([
        *([SYNTHETIC_NOTE, ""] if synthetic else []),
        *([URGENT_LINE, ""] if priority is Priority.URGENT else []),
        f"An image was scored at suspicion {prediction.suspicion} of 10 (alert threshold "
        f"{threshold}). Please prioritise its reading.",
        "",
        f"Image: {image.id} of batch {image.batch_id}, file {file} ({side}, view "
        f"{image.view or '-'}); `mammo results --batch {image.batch_id}` gives its path",
        f"Predicted class {prediction.label}; P(malignant) {prediction.p_malignant:.3f}, "
        f"P(abnormal) {1.0 - prediction.p_normal:.3f}; model {model_label(name, version)}",
        f"Flag: {READ_ALONE_FLAG}",
        "",
        DISCLAIMER,
    ])
    payload: dict[str, Any] = {
        "study_uid": None, "accession_number": None, "patient_pseudonym": None,
        "image_id": image.id, "batch_id": image.batch_id, "file": file,
        "laterality": image.laterality, "view": image.view,
        "suspicion": prediction.suspicion, "exam_suspicion": None, "threshold": threshold,
        "label": prediction.label, "p_malignant": prediction.p_malignant,
        "p_abnormal": 1.0 - prediction.p_normal, "exam_status": None,
        "per_breast": {image.laterality: {"label": prediction.label,
                                          "suspicion": prediction.suspicion,
                                          "p_malignant": prediction.p_malignant,
                                          "views": [image.view] if image.view else []}}
        if image.laterality in ("L", "R") else {},
        "flags": [READ_ALONE_FLAG], "model_version": model_label(name, version),
        "priority": priority.value, "synthetic": synthetic, "disclaimer": DISCLAIMER,
    }
    return Notice(Event.EXAM_ALERT, f"image:{image_id}",
                  _subject(synthetic, priority,
                           f"Suspicion {prediction.suspicion}/10 image to read first "
                           f"(image {image.id}, read alone: no exam)"),
                  text, payload, batch_id=None, image_id=image_id,
                  # Its SOPInstanceUID or content hash; not its created_at, which a file
                  # re-queued after it changed moves.
                  delivery_key=delivery_key("image", image.identity))
