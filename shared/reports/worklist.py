"""The read-first worklist: current exam results, highest suspicion first.

Exam results are normally written by the worker (after each chunk) or the watcher. An exam
whose missing views timed out while neither ran would never get one, so the worklist first
refreshes every study still awaiting a result: the timeout is applied here too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from shared.db.lifecycle import ACTIVE_STATES
from shared.db.schema import ExamResult, Image, Study
from shared.exams import in_blocks
from shared.timeutil import as_utc

WORKLIST_KEYS = ("study_uid", "suspicion", "per_breast", "flags", "report_path")
# A worklist row for a table or CSV (flat_worklist_row): one column per breast.
# Every field of the JSON row but the per-breast details, so a CSV names the patient too.
FLAT_WORKLIST_KEYS = ("rank", "study_uid", "patient_pseudonym", "study_date", "suspicion",
                      "left", "right", "label", "p_malignant", "status", "accession_number",
                      "flags", "report_path")


@dataclass(frozen=True)
class WorklistFilter:
    batch_id: int | None = None
    since: datetime | None = None  # an image of the exam submitted at or after (UTC)
    until: datetime | None = None  # ... before (UTC)
    limit: int | None = None


def exam_pdf_path(report_dir: Path, study_uid: str) -> Path:
    """Where the exam's PDF is written by default, one file per exam.

    A DICOM UID (digits and dots) is the name as it is. Any other study ID (a manifest's
    free text) is made safe for a file name, which can map two IDs to one name ("study A",
    "study_A"), so a digest of the exact ID is added to keep each exam's PDF its own.
    """
    safe = re.sub(r"[^0-9A-Za-z.-]", "_", study_uid)
    if safe != study_uid:
        safe = f"{safe[:80]}-{hashlib.sha256(study_uid.encode()).hexdigest()[:12]}"
    return report_dir / "exams" / f"exam-{safe}.pdf"


@dataclass(frozen=True)
class UnlistedExams:
    """Exams the worklist cannot list yet: no result, because a view is still queued or
    processing (``shared.exams.summarise`` waits for it), however long ago it was sent."""

    exams: int
    oldest: datetime | None  # when the oldest of those views was submitted (UTC)

    def note(self) -> str | None:
        """The line a listing ends with, so that the exams left out are not silently lost."""
        if not self.exams:
            return None
        since = f" (the oldest since {self.oldest:%Y-%m-%d %H:%M} UTC)" if self.oldest else ""
        return (f"{self.exams} exam(s) not listed: a view is still queued or processing"
                f"{since}; `mammo status` shows the queue, `mammo recover` sends stuck "
                "images again")


def _studies_in_scope(flt: WorklistFilter) -> Select[int | None] | None:
    """The studies with an image the filter matches; None when it matches every study.

    Over an alias of images, so a query over images can use it without it being
    correlated to that query's own image."""
    image = aliased(Image)
    studies = select(image.study_id).where(image.study_id.is_not(None))
    narrowed = False
    if flt.batch_id is not None:
        studies, narrowed = studies.where(image.batch_id == flt.batch_id), True
    if flt.since is not None:
        studies, narrowed = studies.where(image.created_at >= flt.since), True
    if flt.until is not None:
        studies, narrowed = studies.where(image.created_at < flt.until), True
    return studies if narrowed else None


def _worklist_query(flt: WorklistFilter) -> Select[ExamResult, Study]:
    stmt = (select(ExamResult, Study).join(Study, Study.id == ExamResult.study_id)
            .where(ExamResult.superseded_at.is_(None)))
    studies = _studies_in_scope(flt)
    if studies is not None:
        stmt = stmt.where(ExamResult.study_id.in_(studies))
    # NULL suspicion (nothing scored: every view failed) goes last; ties keep arrival order.
    stmt = stmt.order_by(ExamResult.suspicion.desc().nulls_last(),
                         ExamResult.p_malignant.desc().nulls_last(), Study.id)
    return stmt.limit(flt.limit) if flt.limit else stmt


def count_worklist(session: Session, flt: WorklistFilter) -> int:
    """How many exams the list holds without ``flt.limit``."""
    unlimited = _worklist_query(replace(flt, limit=None))
    return int(session.scalar(select(func.count()).select_from(unlimited.subquery())) or 0)


def unlisted_exams(session: Session, flt: WorklistFilter) -> UnlistedExams:
    """The exams in ``flt``'s scope with a view still active and no result: one query."""
    has_result = (select(ExamResult.id).where(ExamResult.study_id == Image.study_id,
                                              ExamResult.superseded_at.is_(None)).exists())
    stmt = select(func.count(func.distinct(Image.study_id)), func.min(Image.created_at)).where(
        Image.state.in_(ACTIVE_STATES), Image.study_id.is_not(None), ~has_result)
    studies = _studies_in_scope(flt)
    if studies is not None:
        stmt = stmt.where(Image.study_id.in_(studies))
    exams, oldest = session.execute(stmt).one()
    return UnlistedExams(int(exams or 0), as_utc(oldest))


def _active_images(session: Session, study_ids: list[int]) -> dict[int, int]:
    """Images still queued or processing, per study: a late view the result does not hold."""
    counts: dict[int, int] = {}
    for block in in_blocks(study_ids):
        for study_id, count in session.execute(
                select(Image.study_id, func.count()).where(
                    Image.study_id.in_(block), Image.state.in_(ACTIVE_STATES))
                .group_by(Image.study_id)):
            if study_id is not None:
                counts[study_id] = int(count)
    return counts


def pdf_is_older(pdf: Path, result: ExamResult) -> bool:
    written = datetime.fromtimestamp(pdf.stat().st_mtime, tz=UTC)
    computed = as_utc(result.created_at)
    return computed is not None and written < computed


def _row_flags(result: ExamResult, active: int, stale_pdf: bool) -> list[str]:
    flags = list(result.flags)
    if active:
        flags.append(f"{active} image(s) still being processed: this result may change")
    if stale_pdf:
        flags.append(f"the exam PDF predates this result (version {result.version}): "
                     "write it again with mammo report exam")
    return flags


def worklist_rows(session: Session, flt: WorklistFilter, *,
                  report_dir: Path) -> list[dict[str, Any]]:
    """One row per exam; ``report_path`` is set when the exam's PDF exists.

    Two flags are added to the stored ones, because they change after the result was
    computed: images of the exam still in flight, and a PDF older than the result.
    """
    listed = [(result, study) for result, study in session.execute(_worklist_query(flt))]
    active = _active_images(session, [study.id for _, study in listed])
    rows = []
    for rank, (result, study) in enumerate(listed, start=1):
        pdf = exam_pdf_path(report_dir, study.study_uid)
        has_pdf = pdf.is_file()
        flags = _row_flags(result, active.get(study.id, 0), has_pdf and pdf_is_older(pdf, result))
        rows.append({
            "rank": rank, "study_uid": study.study_uid, "suspicion": result.suspicion,
            "per_breast": {side: {"suspicion": b.get("suspicion"), "label": b.get("label"),
                                  "p_malignant": b.get("p_malignant"),
                                  "bilateral": bool(b.get("bilateral"))}
                           for side, b in sorted(result.per_breast.items())
                           if isinstance(b, dict)},
            "flags": flags,
            "report_path": str(pdf.resolve()) if has_pdf else None,
            "label": result.label, "p_malignant": result.p_malignant, "status": result.status,
            "accession_number": study.accession_number, "study_date": study.study_date,
            "patient_pseudonym": study.patient_pseudonym,
        })
    return rows


def flat_worklist_row(row: dict[str, Any]) -> dict[str, Any]:
    """A worklist row for a table or CSV: one column per breast, flags joined."""
    def breast(side: str) -> int | None:
        found = row["per_breast"].get(side)
        return found.get("suspicion") if found else None

    flat = {**row, "left": breast("L"), "right": breast("R"), "flags": "; ".join(row["flags"])}
    return {key: flat[key] for key in FLAT_WORKLIST_KEYS}
