"""The read-first worklist: current exam results, highest suspicion first.

An exam is ranked by its suspicion, or by a breast's own-view suspicion where reading it
against the other breast lowered a finding (``shared.exams.lowered_by_other_breast``): the
bilateral head marks down a breast when the other breast scores high, so a cancer in each
breast would otherwise rank below a one-sided one. A row's ``suspicion`` is that score, the
one it is ranked (and alerted) by: a reader or a tool that picks the exams at 8 and above
must not skip one listed among them. The exam's validated score stays beside it
(``exam_suspicion``), the per-breast ones in ``per_breast``, and its flag says why they differ.

Exam results are normally written by the worker (after each chunk) or the watcher. An exam
whose missing views timed out while neither ran would never get one, so the worklist first
refreshes every study still awaiting a result: the timeout is applied here too.

An image scored outside any exam (no study: ``shared.read_alone``) is a row of its own,
ranked among the exams by its own score: ``study_uid`` null, ``image_id`` and ``source``
naming it, and a flag saying it was read alone. One that failed is a row too, without a
score, where an exam whose every view failed is listed (last), flagged with its reason:
it must not vanish from the list because it belongs to no exam. Every row names the
model(s) behind its scores (``models``) and gives the probabilities, not only the scores.

A row's ``priority`` is ``urgent`` when any of its images came in an urgent batch (or a copy
of it did: ``shared.db.lifecycle.urgent_studies``): the list stays ranked by suspicion, the
order the contract gives, and the request to read at once is shown beside it, not lost once
the exam is scored.

A row carries what the system doubted in reading its images (a laterality the header and
the pixels disagree on, an implant, a modality taken on trust: the predictions'
``input_notes``), as the exam PDF does, from the same function (``input_note_flags``).
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Row, Select, bindparam, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from shared.db.clock import Clocks
from shared.db.lifecycle import ACTIVE_STATES, in_blocks, priorities_of, urgent_studies
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction, Study
from shared.enums import ImageState, Priority
from shared.exams import (
    STANDARD_VIEWS,
    read_first_suspicion,
    read_first_suspicion_sql,
    view_label,
)
from shared.queries import FETCH_BLOCK, model_labels
from shared.read_alone import (
    READ_ALONE_FLAG,
    READ_ALONE_STATUS,
    failed_alone,
    failed_alone_flag,
    model_label,
    scored_alone,
)
from shared.timeutil import as_utc

WORKLIST_KEYS = ("study_uid", "suspicion", "per_breast", "flags", "report_path")
# A worklist row for a table or CSV (flat_worklist_row): one column per breast.
# Every field of the JSON row but the per-breast details, so a CSV names the patient too.
FLAT_WORKLIST_KEYS = ("rank", "priority", "study_uid", "image_id", "source",
                      "patient_pseudonym", "study_date", "suspicion", "exam_suspicion",
                      "left", "right",
                      "left_p_malignant", "left_p_abnormal", "right_p_malignant",
                      "right_p_abnormal", "label", "p_malignant", "models", "status",
                      "accession_number", "flags", "report_path")
_SIDES = (("L", "left"), ("R", "right"))


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


def image_pdf_path(report_dir: Path, image_id: int) -> Path:
    """Where one image's PDF (``mammo report image``) is written by default: beside the exam
    PDFs, named by the image id, never by its file name (scanners put patient names in
    paths)."""
    return report_dir / "exams" / f"image-{image_id}.pdf"


@dataclass(frozen=True)
class UnlistedExams:
    """Exams the worklist cannot list yet, having no result (``shared.exams.summarise``):
    ``exams`` because a view is still queued or processing, however long ago it was sent;
    ``waiting`` because a standard view never arrived, until ``timeout_s`` after the exam's
    last image (then it is listed, incomplete)."""

    exams: int
    oldest: datetime | None  # when the oldest of those views was submitted (UTC)
    waiting: int = 0
    first_due: datetime | None = None  # when the first waiting exam is listed (UTC)
    last_due: datetime | None = None  # ... and the last
    timeout_s: float = 0.0
    alone: int = 0  # images outside any exam still queued or processing

    def note(self) -> str | None:
        """The lines a listing ends with, so that the exams left out are not silently lost."""
        lines = []
        if self.alone:
            lines.append(f"{self.alone} image(s) outside any exam not listed yet: still "
                         "queued or processing; `mammo status` shows the queue")
        if self.exams:
            since = (f" (the oldest since {self.oldest:%Y-%m-%d %H:%M} UTC)" if self.oldest
                     else "")
            lines.append(f"{self.exams} exam(s) not listed: a view is still queued or "
                         f"processing{since}; `mammo status` shows the queue, `mammo recover` "
                         "sends stuck images again")
        if self.waiting and self.first_due and self.last_due:
            until = f"{self.first_due:%Y-%m-%d %H:%M} UTC"
            if f"{self.last_due:%Y-%m-%d %H:%M}" != f"{self.first_due:%Y-%m-%d %H:%M}":
                until += f" (the last until {self.last_due:%Y-%m-%d %H:%M} UTC)"
            lines.append(f"{self.waiting} exam(s) wait for missing views until {until}: "
                         f"MAMMO_EXAM_TIMEOUT_S ({self.timeout_s:g} s) after an exam's last "
                         "image, it is listed as incomplete (an exam PDF written before "
                         "then is flagged, and `mammo worklist --write-reports` writes it "
                         "again)")
        return "\n".join(lines) or None


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


# What a worklist row needs of an exam's current result and its study: columns, not the
# ORM entities (whose views/missing_views JSON would be decoded for nothing, per row).
_EXAM_COLUMNS = (
    ExamResult.suspicion, ExamResult.per_breast, ExamResult.flags, ExamResult.label,
    ExamResult.p_malignant, ExamResult.status, ExamResult.version, ExamResult.created_at,
    Study.id.label("study_id"), Study.study_uid, Study.accession_number, Study.study_date,
    Study.patient_pseudonym,
)


def _worklist_query(flt: WorklistFilter) -> Select[*tuple[Any, ...]]:
    stmt = (select(*_EXAM_COLUMNS).select_from(ExamResult)
            .join(Study, Study.id == ExamResult.study_id)
            .where(ExamResult.superseded_at.is_(None)))
    studies = _studies_in_scope(flt)
    if studies is not None:
        stmt = stmt.where(ExamResult.study_id.in_(studies))
    # NULL suspicion (nothing scored: every view failed) goes last; ties keep arrival order.
    stmt = stmt.order_by(read_first_suspicion_sql().desc().nulls_last(),
                         ExamResult.p_malignant.desc().nulls_last(), Study.id)
    return stmt.limit(flt.limit) if flt.limit else stmt


def _in_scope(stmt: Select[Any], flt: WorklistFilter) -> Select[Any]:
    """``stmt`` over images, narrowed to the images the filter matches."""
    if flt.batch_id is not None:
        stmt = stmt.where(Image.batch_id == flt.batch_id)
    if flt.since is not None:
        stmt = stmt.where(Image.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(Image.created_at < flt.until)
    return stmt


def _alone_query(flt: WorklistFilter) -> Select[Any]:
    """The images scored outside any exam, in the exams' order: their own scores."""
    stmt = _in_scope(scored_alone(Image, Prediction, ModelVersion.name, ModelVersion.version,
                                  ModelVersion.sha256), flt)
    stmt = stmt.order_by(Prediction.suspicion.desc(), Prediction.p_malignant.desc(), Image.id)
    return stmt.limit(flt.limit) if flt.limit else stmt


def _failed_alone_query(flt: WorklistFilter) -> Select[Any]:
    """The images outside any exam that failed, in image order: listed after every score,
    where the exams whose every view failed are."""
    stmt = _in_scope(failed_alone(Image), flt).order_by(Image.id)
    return stmt.limit(flt.limit) if flt.limit else stmt


def _count(session: Session, query: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def count_read_alone(session: Session, flt: WorklistFilter) -> int:
    """How many images outside any exam (scored, or failed) the list holds without
    ``flt.limit``: each is a row of its own."""
    whole = replace(flt, limit=None)
    return _count(session, _alone_query(whole)) + _count(session, _failed_alone_query(whole))


def count_worklist(session: Session, flt: WorklistFilter) -> int:
    """How many rows (exams, and images read alone) the list holds without ``flt.limit``."""
    return (_count(session, _worklist_query(replace(flt, limit=None)))
            + count_read_alone(session, flt))


def unlisted_exams(session: Session, flt: WorklistFilter, *,
                   timeout_s: float) -> UnlistedExams:
    """The exams in ``flt``'s scope without a result: with a view still active, or
    (none active) waiting ``timeout_s`` after their last image for a missing view; and
    the images outside any exam still active. Three queries. Call it after
    ``refresh_due_exams``, which lists the exams whose wait is over."""
    has_result = (select(ExamResult.id).where(ExamResult.study_id == Image.study_id,
                                              ExamResult.superseded_at.is_(None)).exists())
    unlisted = [Image.study_id.is_not(None), ~has_result]
    studies = _studies_in_scope(flt)
    if studies is not None:
        unlisted.append(Image.study_id.in_(studies))
    exams, oldest = session.execute(
        select(func.count(func.distinct(Image.study_id)), func.min(Image.created_at))
        .where(Image.state.in_(ACTIVE_STATES), *unlisted)).one()
    active = func.sum(case((Image.state.in_(ACTIVE_STATES), 1), else_=0))
    idle = (select(func.max(Image.created_at).label("last")).where(*unlisted)
            .group_by(Image.study_id).having(active == 0).subquery())
    waiting, first, last = session.execute(
        select(func.count(), func.min(idle.c.last), func.max(idle.c.last))).one()
    alone = session.scalar(_in_scope(select(func.count()).select_from(Image), flt).where(
        Image.study_id.is_(None), Image.state.in_(ACTIVE_STATES)))
    due = timedelta(seconds=timeout_s)
    first, last = as_utc(first), as_utc(last)
    return UnlistedExams(int(exams or 0), as_utc(oldest), int(waiting or 0),
                         first and first + due, last and last + due, timeout_s,
                         int(alone or 0))


@dataclass
class _ImagesToFlag:
    """What the exam's images say that its stored result does not."""

    active: int = 0  # still queued or processing: a late view the result does not hold
    burned_in: list[int] = field(default_factory=list)  # ids, BurnedInAnnotation YES


# Built once, run for each block of study ids (``study_ids``): a streamed worklist runs them
# per block, and statements built per block were garbage the size of the list. The study
# range repeats the ids for PostgreSQL without statistics (``_EXAM_VIEWS`` says why): 18.6 s
# of a restored year's 46 s worklist export was this query scanning every image per block.
_IMAGES_TO_FLAG = (
    select(Image.study_id, Image.id, Image.state, Image.burned_in_annotation)
    .where(Image.study_id.in_(bindparam("study_ids", expanding=True)),
           Image.study_id.between(bindparam("first_id"), bindparam("last_id")),
           or_(Image.state.in_(ACTIVE_STATES), Image.burned_in_annotation.is_(True)))
    .order_by(Image.id))


def _images_to_flag(session: Session, study_ids: list[int]) -> dict[int, _ImagesToFlag]:
    found: dict[int, _ImagesToFlag] = {}
    for block in in_blocks(study_ids):
        for study_id, image_id, state, burned_in in session.execute(
                _IMAGES_TO_FLAG, {"study_ids": block, "first_id": min(block),
                                  "last_id": max(block)}):
            if study_id is None:
                continue
            images = found.setdefault(study_id, _ImagesToFlag())
            images.active += state in ACTIVE_STATES
            if burned_in:
                images.burned_in.append(image_id)
    return found


def burned_in_flag(image_ids: list[int]) -> str | None:
    """The flag of an exam with images whose pixels carry text (BurnedInAnnotation YES)."""
    if not image_ids:
        return None
    return (f"burned-in annotation in image(s) {', '.join(map(str, image_ids))} "
            "(BurnedInAnnotation YES): text in the pixels may name the patient (check the "
            "images before sharing them) and may mislead the model")


class NotedView(Protocol):
    """A scored view and how its file was read (``shared.reports.exam_data.ViewResult``)."""

    @property
    def image_id(self) -> int: ...

    @property
    def view_key(self) -> str: ...

    @property
    def input_notes(self) -> Mapping[str, str] | None: ...


@dataclass(frozen=True)
class _ReadView:
    """A done image's view and its current prediction's input notes."""

    image_id: int
    laterality: str | None
    view: str | None
    input_notes: Mapping[str, str] | None

    @property
    def view_key(self) -> str:
        return view_label(self.laterality, self.view)


def _view_order(view: NotedView) -> tuple[int, int]:
    key = view.view_key
    return (STANDARD_VIEWS.index(key) if key in STANDARD_VIEWS else len(STANDARD_VIEWS),
            view.image_id)


def input_note_flags(views: Iterable[NotedView]) -> list[str]:
    """A flag per view whose file was not read plainly (its prediction's ``input_notes``):
    what a reader sees may differ from the stored file (an inversion, a rotation, a range
    taken from the pixels), or the system doubts what the header says (a laterality the
    pixels contradict, a modality taken on trust). In the standard view order, then by
    image: the exam PDF's flags and the worklist row's, from this one function."""
    return [f"{v.view_key} (image {v.image_id}) read with notes: "
            f"{'; '.join(v.input_notes.values())}"
            for v in sorted(views, key=_view_order) if v.input_notes]


def pdf_is_older(pdf: Path, result: ExamResult | Prediction | Row[Any], clocks: Clocks) -> bool:
    return written_before(pdf, result.created_at, clocks)


def written_before(pdf: Path, when: datetime | None, clocks: Clocks) -> bool:
    """Whether the file was last written before ``when`` (a result's time, on the database's
    clock; None: never), judged across the two clocks (``Clocks.written_after``): compared
    as stamped, on a host ahead of the server a PDF written before an exam's later result
    (its missing views timed out) read as current, neither flagged nor written again, and
    on a host behind every PDF read as older than its result, flagged and rewritten at each
    run. ``clocks``: read once per listing, not per row."""
    computed = as_utc(when)
    return computed is not None and not clocks.written_after(pdf, computed)


def _row_flags(result: Row[Any], images: _ImagesToFlag, stale_pdf: bool,
               notes: list[str]) -> list[str]:
    flags = [*result.flags, *notes]  # the stored ones, then how views were read (as the PDF)
    if images.active:
        flags.append(f"{images.active} image(s) still being processed: this result may change")
    flags += filter(None, [burned_in_flag(images.burned_in)])
    if stale_pdf:
        # Every exam whose missing views timed out after `mammo run` wrote its PDF: one
        # command writes them all again.
        flags.append(f"the exam PDF predates this result (version {result.version}): "
                     "write it again with mammo report exam, or every listed exam's with "
                     "mammo worklist --write-reports")
    return flags


# The blocks' done images, each with its latest prediction (highest id, as
# ``shared.queries.with_latest_prediction`` takes it), found per image by a correlated
# max(id) on ix_predictions_image_id_id and then read by primary key. Its plan holds before
# PostgreSQL's first ANALYZE (a restored or migrated database, autovacuum behind a busy
# night): not with_latest_prediction's anti-join (a nested loop over every newer prediction
# of every image), nor a join to every prediction of the images (a scan of the whole
# predictions table per block of 500 exams: 765 ms against 32 ms analysed, at a year's
# 323,000 predictions). The study range repeats what the list says: without statistics
# PostgreSQL takes 500 ids for a fifth of the images and scans them all, while a range is
# a default 0.5%, so ix_images_study_id is used. The state is compared here, in Python:
# in SQL it let the planner pick ix_images_state_enqueued, which lists nearly every image
# as done.
_LATEST = aliased(Prediction)
_EXAM_VIEWS = (
    select(Image.study_id, Image.id, Image.laterality, Image.view, Image.state,
           Prediction.input_notes, ModelVersion.name, ModelVersion.version,
           ModelVersion.sha256)
    .select_from(Image)
    .join(Prediction, Prediction.id == select(func.max(_LATEST.id))
          .where(_LATEST.image_id == Image.id).scalar_subquery())
    .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
    .where(Image.study_id.in_(bindparam("study_ids", expanding=True)),
           Image.study_id.between(bindparam("first_id"), bindparam("last_id"))))


@dataclass
class _ExamViews:
    """What the current predictions of an exam's done images (which its current result
    was computed from) add to its row."""

    models: set[tuple[str, str]] = field(default_factory=set)  # (NAME:VERSION, sha256)
    noted: list[_ReadView] = field(default_factory=list)  # the views read with notes


def _exam_views(session: Session, study_ids: list[int]) -> dict[int, _ExamViews]:
    found: dict[int, _ExamViews] = {}
    for block in in_blocks(study_ids):
        rows = session.execute(_EXAM_VIEWS, {"study_ids": block, "first_id": min(block),
                                             "last_id": max(block)})
        for study_id, image_id, laterality, view, state, notes, name, version, sha256 in rows:
            if state != ImageState.DONE.value or study_id is None:
                continue
            views = found.setdefault(study_id, _ExamViews())
            if name is not None:
                views.models.add((model_label(name, version), sha256))
            if notes:
                views.noted.append(_ReadView(image_id, laterality, view, notes))
    return found


def _exam_row(result: Row[Any], flags: list[str], report_path: str | None,
              priority: Priority) -> dict[str, Any]:
    """``result``: a row of ``_EXAM_COLUMNS``, the current result and its study's columns."""
    study = result
    return {
        "priority": priority.value,
        # Ranked by it, so printed as it (_worklist_query orders by its SQL twin).
        "study_uid": study.study_uid, "image_id": None, "source": None,
        # The attributes read_first_suspicion reads (suspicion, per_breast) are the row's.
        "suspicion": read_first_suspicion(cast(ExamResult, result)),
        "exam_suspicion": result.suspicion,
        "per_breast": {side: {"suspicion": b.get("suspicion"), "label": b.get("label"),
                              "p_malignant": b.get("p_malignant"),
                              # Kept with exam results since the worklist gives it; older
                              # results have none (null).
                              "p_abnormal": b.get("p_abnormal"),
                              "bilateral": bool(b.get("bilateral")),
                              "own_suspicion": b.get("own_suspicion"),
                              "own_p_malignant": b.get("own_p_malignant")}
                       for side, b in sorted(result.per_breast.items())
                       if isinstance(b, dict)},
        "flags": flags, "report_path": report_path,
        "label": result.label, "p_malignant": result.p_malignant, "status": result.status,
        "accession_number": study.accession_number, "study_date": study.study_date,
        "patient_pseudonym": study.patient_pseudonym,
    }


def _image_pdf(report_dir: Path, image_id: int) -> Path | None:
    """The image's PDF (``mammo report image``), when it has been written."""
    pdf = image_pdf_path(report_dir, image_id)
    return pdf if pdf.is_file() else None


def _alone_row(image: Image, prediction: Prediction, report_dir: Path,
               clocks: Clocks, priority: Priority) -> dict[str, Any]:
    """An image read alone, as an exam row: its own score stands for the exam's; its
    report is the image's PDF, as an exam's is the exam PDF."""
    pdf = _image_pdf(report_dir, image.id)
    stale = [] if pdf is None or not pdf_is_older(pdf, prediction, clocks) else [
        "the image PDF predates this result: write it again with mammo report image "
        f"{image.id}, or every listed row's with mammo worklist --write-reports"]
    breast = {"suspicion": prediction.suspicion, "label": prediction.label,
              "p_malignant": prediction.p_malignant, "p_abnormal": 1.0 - prediction.p_normal,
              "bilateral": False, "own_suspicion": prediction.suspicion,
              "own_p_malignant": prediction.p_malignant}
    notes = input_note_flags([_ReadView(image.id, image.laterality, image.view,
                                        prediction.input_notes)])
    return _image_row(
        image, pdf, READ_ALONE_FLAG, [*notes, *stale], priority, suspicion=prediction.suspicion,
        per_breast={image.laterality: breast} if image.laterality in ("L", "R") else {},
        label=prediction.label, p_malignant=prediction.p_malignant)


def _failed_alone_row(image: Image, report_dir: Path, priority: Priority) -> dict[str, Any]:
    """An image outside any exam that failed: listed as an exam whose every view failed is,
    without a score, flagged with its reason."""
    return _image_row(image, _image_pdf(report_dir, image.id),
                      failed_alone_flag(image.error_code, image.error_message), [], priority,
                      suspicion=None, per_breast={}, label=None, p_malignant=None)


def _image_row(image: Image, pdf: Path | None, first_flag: str, later_flags: list[str],
               priority: Priority, *,
               suspicion: int | None, per_breast: dict[str, Any], label: str | None,
               p_malignant: float | None) -> dict[str, Any]:
    """A row of one image outside any exam, keyed as an exam row; its flags: ``first_flag``
    (read alone, or failed), burned-in text, then ``later_flags``."""
    burned_in = burned_in_flag([image.id] if image.burned_in_annotation else [])
    return {
        "priority": priority.value,
        "study_uid": None, "image_id": image.id, "source": image.source,
        "suspicion": suspicion, "exam_suspicion": None, "per_breast": per_breast,
        "flags": [first_flag, *filter(None, [burned_in]), *later_flags],
        "report_path": str(pdf.resolve()) if pdf else None, "label": label,
        "p_malignant": p_malignant, "status": READ_ALONE_STATUS,
        "accession_number": None, "study_date": None, "patient_pseudonym": None,
    }


def _read_first_order(row: dict[str, Any]) -> tuple[bool, int, bool, float, bool]:
    """The exams' SQL order (suspicion, then P(malignant), highest first, unknown last)
    over both kinds of row; at a tie an exam comes before an image read alone."""
    suspicion, p_malignant = row["suspicion"], row["p_malignant"]
    return (suspicion is None, -(suspicion or 0), p_malignant is None, -(p_malignant or 0.0),
            row["study_uid"] is None)


def worklist_rows(session: Session, flt: WorklistFilter, *,
                  report_dir: Path) -> list[dict[str, Any]]:
    """``iter_worklist``'s rows, as a list."""
    return list(iter_worklist(session, flt, report_dir=report_dir))


_Found = tuple[dict[str, Any], set[tuple[str, str]]]  # a row, and its models' (label, sha256)


def iter_worklist(session: Session, flt: WorklistFilter, *,
                  report_dir: Path) -> Iterator[dict[str, Any]]:
    """One row per exam, and per image outside any exam (scored, or failed: listed last, as
    an exam whose every view failed is); ``report_path`` is set when the exam's PDF exists,
or for an image outside any exam, the image's PDF (``mammo report image``).

    Flags are added to the stored ones for what the result does not hold: how its views
    were read (input notes, as the exam PDF flags them), images of the exam still in
    flight, a PDF older than the result, and images with burned-in text.
    ``models`` names the model(s) behind each row's scores.

    Yielded as the database hands the rows over, ``FETCH_BLOCK`` exams at a time (each
    block's flags and models read in a query or two), the exams and the images read alone
    merged in their common order: memory stays flat however long the list. Iterate it
    while ``session`` is open.
    """
    # Named over the whole list: two models sharing a NAME:VERSION show their sha256s. Only
    # then does it take a first pass over the list, to know which of them it holds.
    labels: dict[tuple[str, str], str] | None = None
    clocks = Clocks.read(session)  # PDF times against results' (``written_before``)
    if _shared_model_names(session):
        every = chain(_found(session, flt, report_dir, clocks),
                      _alone_found(session, flt, report_dir, clocks))
        labels = model_labels(pair for _, pairs in every for pair in pairs)
    # At equal keys merge keeps the streams' order: a failed image alone comes after the
    # exams whose every view failed.
    merged = heapq.merge(_found(session, flt, report_dir, clocks),
                         _alone_found(session, flt, report_dir, clocks),
                         _failed_alone_found(session, flt, report_dir),
                         key=lambda found: _read_first_order(found[0]))
    for rank, (row, pairs) in enumerate(islice(merged, flt.limit or None), start=1):
        models = sorted(pair[0] if labels is None else labels[pair] for pair in pairs)
        yield {"rank": rank, **row, "models": models}


def _found(session: Session, flt: WorklistFilter, report_dir: Path,
           clocks: Clocks) -> Iterator[_Found]:
    """The exams' rows in the list's order (exams only: ``_alone_found`` has the others)."""
    result = session.execute(_worklist_query(flt).execution_options(yield_per=FETCH_BLOCK))
    for block in result.partitions():
        study_ids = [found.study_id for found in block]
        to_flag = _images_to_flag(session, study_ids)
        exam_views = _exam_views(session, study_ids)
        urgent = urgent_studies(session, study_ids)
        for found in block:
            pdf = exam_pdf_path(report_dir, found.study_uid)
            has_pdf = pdf.is_file()
            views = exam_views.get(found.study_id, _ExamViews())
            flags = _row_flags(found, to_flag.get(found.study_id, _ImagesToFlag()),
                               has_pdf and pdf_is_older(pdf, found, clocks),
                               input_note_flags(views.noted))
            row = _exam_row(found, flags, str(pdf.resolve()) if has_pdf else None,
                            Priority.URGENT if found.study_id in urgent else Priority.ROUTINE)
            yield row, views.models


def _alone_found(session: Session, flt: WorklistFilter, report_dir: Path,
                 clocks: Clocks) -> Iterator[_Found]:
    result = session.execute(_alone_query(flt).execution_options(yield_per=FETCH_BLOCK))
    for block in result.partitions():
        priorities = priorities_of(session, [found[0].id for found in block])
        for image, prediction, name, version, sha256 in block:
            yield (_alone_row(image, prediction, report_dir, clocks, priorities[image.id]),
                   {(model_label(name, version), sha256)})


def _failed_alone_found(session: Session, flt: WorklistFilter,
                        report_dir: Path) -> Iterator[_Found]:
    result = session.scalars(_failed_alone_query(flt).execution_options(yield_per=FETCH_BLOCK))
    for block in result.partitions():
        priorities = priorities_of(session, [image.id for image in block])
        for image in block:
            yield _failed_alone_row(image, report_dir, priorities[image.id]), set()


def _shared_model_names(session: Session) -> bool:
    """Whether two registered models (two files) share a NAME:VERSION."""
    shared = (select(ModelVersion.name, ModelVersion.version)
              .group_by(ModelVersion.name, ModelVersion.version)
              .having(func.count(func.distinct(ModelVersion.sha256)) > 1).limit(1))
    return session.execute(shared).first() is not None


def flat_worklist_row(row: dict[str, Any]) -> dict[str, Any]:
    """A worklist row for a table or CSV: columns per breast, flags and models joined. None
    (not "") where there are none, a failed image's models: the table shows "-" there, as in
    every other empty cell; the CSV cell is empty either way."""
    flat = {**row, "flags": "; ".join(row["flags"]) or None,
            "models": "; ".join(row["models"]) or None}
    for side, name in _SIDES:
        breast = row["per_breast"].get(side) or {}
        flat[name] = breast.get("suspicion")
        flat[f"{name}_p_malignant"] = breast.get("p_malignant")
        flat[f"{name}_p_abnormal"] = breast.get("p_abnormal")
    return {key: flat[key] for key in FLAT_WORKLIST_KEYS}
