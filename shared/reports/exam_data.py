"""Everything one exam's report shows, read from the database by StudyInstanceUID; and the
same report for one image (``mammo report image``), read by its image id."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.registry import METADATA_FILE
from shared.db.lifecycle import ACTIVE_STATES, priorities_of, study_priority
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction, Study
from shared.enums import Priority
from shared.errors import ReportTargetNotFoundError
from shared.exams import STANDARD_VIEWS, lowered_by_other_breast, view_flags_text, view_label
from shared.queries import model_labels
from shared.read_alone import READ_ALONE_FLAG, failed_alone_flag
from shared.reports.worklist import input_note_flags
from shared.synthetic import SYNTHETIC_MANUFACTURER
from shared.timeutil import as_utc


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    preprocessing_version: str
    input_size: tuple[int, int]
    patch: int | None  # patch models place their heatmap by window; None: whole frame
    # Input pixels per heatmap location (metadata "heatmap_stride"); None: not stated, the
    # shipped architecture's is assumed (models.architecture.STRIDE).
    stride: int | None = None


@dataclass(frozen=True)
class ViewResult:
    image_id: int
    source: str
    identity: str
    laterality: str | None
    view: str | None
    state: str
    error_code: str | None
    error_message: str | None
    spacing_mm: tuple[float, float] | None
    submitted_at: datetime | None
    finished_at: datetime | None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    suspicion: int | None = None
    predicted_at: datetime | None = None
    heatmap_png: bytes | None = None
    model: ModelInfo | None = None
    archived_path: str | None = None  # where the watcher moved the file, if it did
    view_flags: str | None = None  # "magnification,spot_compression": a supplementary view
    synthetic: bool = False  # made by `mammo demo` / shared.synthetic: not a patient
    burned_in_annotation: bool | None = None  # BurnedInAnnotation: text in the pixels
    # How the scored file was read, where a reader should know (inverted, EXIF-rotated...):
    # {kind: sentence}; {} for a plain reading, None unless scored or scored before kept.
    input_notes: dict[str, str] | None = None

    @property
    def view_key(self) -> str:
        return view_label(self.laterality, self.view)

    @property
    def title(self) -> str:
        """The view as a reader names it: a spot view is not the plain L-CC beside it."""
        flags = view_flags_text(self.view_flags)
        return f"{self.view_key} ({flags})" if flags else self.view_key


@dataclass(frozen=True)
class BreastResult:
    """One breast's part of the exam result. Its score is over its views read against the
    other breast (``bilateral``); ``own_suspicion`` and ``own_p_malignant`` are its views'
    own scores before that reading (None in a result stored before they were kept)."""

    suspicion: int | None
    label: str | None
    p_malignant: float | None
    views: list[str]
    bilateral: bool
    own_suspicion: int | None = None
    own_p_malignant: float | None = None

    @property
    def lowered_by_other_breast(self) -> bool:
        """The other breast's score lowered a finding of this one's own views: the report
        shows both scores, and the exam is flagged to read both breasts."""
        return lowered_by_other_breast(self.own_suspicion, self.suspicion)

    @classmethod
    def of(cls, stored: object) -> BreastResult | None:
        """From ``exam_results.per_breast[side]``; None for a breast with no scored view."""
        if not isinstance(stored, dict):
            return None
        return cls(stored.get("suspicion"), stored.get("label"), stored.get("p_malignant"),
                   list(stored.get("views") or []), bool(stored.get("bilateral")),
                   stored.get("own_suspicion"), stored.get("own_p_malignant"))


@dataclass(frozen=True)
class ExamReport:
    """An exam's report; or, with ``image_id``, one image's: ``views`` holds that image
    alone, ``result`` is None (the exam result is the exam report's), and ``study_uid`` is
    the exam it belongs to, None for an image read alone (no study ID)."""

    study_uid: str | None
    patient_pseudonym: str | None
    accession_number: str | None
    study_date: str | None
    result: ExamResult | None
    views: list[ViewResult]
    # Without a result and nothing in flight: when the exam stops waiting for its missing
    # views (MAMMO_EXAM_TIMEOUT_S after its last image) and is scored, incomplete.
    due_at: datetime | None = None
    image_id: int | None = None  # the report of this one image (``load_image_report``)
    # "urgent" when an image was submitted urgent (``shared.db.lifecycle.urgent_studies``),
    # as the worklist row and the alert say.
    priority: str = Priority.ROUTINE.value

    @property
    def is_image(self) -> bool:
        return self.image_id is not None

    @property
    def read_alone(self) -> bool:
        """An image report of an image that belongs to no exam."""
        return self.is_image and self.study_uid is None

    @property
    def read_alone_flags(self) -> list[str]:
        """For an image read alone, the worklist row's flag: read alone, or failed and why
        (``shared.read_alone``); none otherwise."""
        if not self.read_alone:
            return []
        return [READ_ALONE_FLAG if v.state == "done" else
                failed_alone_flag(v.error_code, v.error_message) if v.state == "failed" else
                f"{v.view_key} (image {v.image_id}) is {v.state}; it belongs to no exam"
                for v in self.views]

    def breast(self, side: str) -> BreastResult | None:
        """The exam result's breast ``side`` ("L", "R"); None without a result or a scored
        view of that breast."""
        return BreastResult.of(self.result.per_breast.get(side)) if self.result else None

    @property
    def synthetic_views(self) -> int:
        return sum(v.synthetic for v in self.views)

    @property
    def synthetic(self) -> bool:
        """Every image is synthetic: only then is the whole exam test data, not a patient."""
        return bool(self.views) and self.synthetic_views == len(self.views)

    @property
    def models(self) -> list[ModelInfo]:
        return sorted({v.model for v in self.views if v.model},
                      key=lambda m: (m.name, m.version))

    def model_label(self, model: ModelInfo) -> str:
        """NAME:VERSION, with its sha256's first digits where two of the exam's share one."""
        labels = model_labels((f"{m.name}:{m.version}", m.sha256) for m in self.models)
        return labels[(f"{model.name}:{model.version}", model.sha256)]

    @property
    def input_note_flags(self) -> list[str]:
        """A flag per view whose file was not read plainly: what a reader sees may differ
        from the stored file (an inversion, a rotation, a range taken from the pixels).
        The worklist's rows carry the same flags, from the same function."""
        return input_note_flags(self.views)

    @property
    def awaited_views(self) -> list[str]:
        """The standard views no image of the exam stands for (a spot view is not one);
        none for an image report, which awaits nothing."""
        if self.is_image:
            return []
        arrived = {v.view_key for v in self.views if not v.view_flags}
        return [view for view in STANDARD_VIEWS if view not in arrived]


def _heatmap_geometry(path: str) -> tuple[int | None, int | None]:
    """The model's patch size and heatmap stride from its metadata; None for what it does
    not state, or both when the directory is gone."""
    try:
        meta = json.loads((Path(path) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(meta, dict):
        return None, None
    patch, stride = meta.get("patch"), meta.get("heatmap_stride")
    return (int(patch) if isinstance(patch, int | float) else None,
            int(stride) if isinstance(stride, int | float) else None)


def _model(row: ModelVersion, cache: dict[int, ModelInfo]) -> ModelInfo:
    if row.id not in cache:
        height, width = row.input_size[:2]
        cache[row.id] = ModelInfo(row.name, row.version, row.sha256, row.preprocessing_version,
                                  (int(height), int(width)), *_heatmap_geometry(row.path))
    return cache[row.id]


def _view_order(view: ViewResult) -> tuple[bool, int, int]:
    """Scored views first in the standard order; failed or pending ones after them."""
    key = view.view_key
    return (view.state != "done",
            STANDARD_VIEWS.index(key) if key in STANDARD_VIEWS else len(STANDARD_VIEWS),
            view.image_id)


def _view(image: Image, pred: Prediction | None, model: ModelInfo | None) -> ViewResult:
    spacing = ((image.spacing_row_mm, image.spacing_column_mm)
               if image.spacing_row_mm and image.spacing_column_mm else None)
    base: dict[str, Any] = {
        "image_id": image.id, "source": image.source, "identity": image.identity,
        "archived_path": image.archived_path, "view_flags": image.view_flags,
        "synthetic": image.manufacturer == SYNTHETIC_MANUFACTURER,
        "burned_in_annotation": image.burned_in_annotation,
        "laterality": image.laterality,
        "view": image.view, "state": image.state, "error_code": image.error_code,
        "error_message": image.error_message, "spacing_mm": spacing,
        "submitted_at": as_utc(image.created_at), "finished_at": as_utc(image.finished_at),
    }
    if pred is None or image.state != "done":
        return ViewResult(**base)
    return ViewResult(
        **base, label=pred.label, suspicion=pred.suspicion,
        probabilities={"normal": pred.p_normal, "benign": pred.p_benign,
                       "malignant": pred.p_malignant},
        predicted_at=as_utc(pred.created_at), heatmap_png=pred.heatmap_png, model=model,
        input_notes=pred.input_notes)


def _load_views(session: Session, *where: Any) -> list[ViewResult]:
    """The images ``where`` selects, each with its latest prediction and that one's model,
    scored views first in the standard order."""
    latest = (select(Prediction.image_id, func.max(Prediction.id).label("pid"))
              .join(Image, Image.id == Prediction.image_id)
              .where(*where).group_by(Prediction.image_id).subquery())
    stmt = (select(Image, Prediction, ModelVersion).where(*where)
            .outerjoin(latest, latest.c.image_id == Image.id)
            .outerjoin(Prediction, Prediction.id == latest.c.pid)
            .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id))
    cache: dict[int, ModelInfo] = {}
    views = [_view(image, pred, _model(mv, cache) if mv is not None else None)
             for image, pred, mv in session.execute(stmt).all()]
    return sorted(views, key=_view_order)


def load_exam_report(session: Session, study_uid: str, *,
                     timeout_s: float | None = None) -> ExamReport:
    """``timeout_s``: MAMMO_EXAM_TIMEOUT_S, to say until when an exam without a result
    waits for its missing views."""
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        raise ReportTargetNotFoundError(f"no exam with StudyInstanceUID {study_uid}")
    result = session.scalars(select(ExamResult).where(
        ExamResult.study_id == study.id, ExamResult.superseded_at.is_(None))).first()
    views = _load_views(session, Image.study_id == study.id)
    report = ExamReport(study.study_uid, study.patient_pseudonym, study.accession_number,
                        study.study_date, result, views,
                        priority=study_priority(session, study.id).value)
    arrivals = [v.submitted_at for v in views if v.submitted_at]
    if (result is None and timeout_s is not None and arrivals and report.awaited_views
            and not any(v.state in ACTIVE_STATES for v in views)):
        return replace(report, due_at=max(arrivals) + timedelta(seconds=timeout_s))
    return report


_MAX_ID = 2**31 - 1  # past PostgreSQL's INTEGER: no image, and a driver error to bind


def load_image_report(session: Session, image_id: int) -> ExamReport:
    """The report of one image, whether it belongs to an exam or was read alone: its view
    as the exam report shows it, with the exam's identification when it has one, and no
    exam result (the exam report reads the image against the exam's other views)."""
    image = session.get(Image, image_id) if 0 < image_id <= _MAX_ID else None
    if image is None:
        raise ReportTargetNotFoundError(
            f"no image with id {image_id}; `mammo results` and `mammo worklist` list each "
            "image_id")
    study = session.get(Study, image.study_id) if image.study_id is not None else None
    views = _load_views(session, Image.id == image.id)
    priority = priorities_of(session, [image.id])[image.id].value
    if study is None:
        return ExamReport(None, None, None, None, None, views, image_id=image.id,
                          priority=priority)
    return ExamReport(study.study_uid, study.patient_pseudonym, study.accession_number,
                      study.study_date, None, views, image_id=image.id, priority=priority)
