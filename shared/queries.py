"""Read-side queries behind ``mammo status`` and ``mammo results``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from shared.db.schema import Batch, DuplicateSubmission, Image, ModelVersion, Prediction, Study
from shared.enums import ErrorCode, ImageState
from shared.timeutil import as_utc, utcnow

RESULT_KEYS = (
    "image_id", "batch_id", "source", "state", "error_code", "error_message", "study_uid",
    "sop_instance_uid", "laterality", "view", "label", "p_normal", "p_benign", "p_malignant",
    "suspicion", "model_version",
)


@dataclass(frozen=True)
class ResultFilter:
    batch_id: int | None = None
    study_uid: str | None = None
    patient_pseudonym: str | None = None
    state: str | None = None
    label: str | None = None
    min_suspicion: int | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    offset: int = 0
    # With batch_id (and no other filter): also a row per file the batch sent again, state
    # and error_code "duplicate", carrying the original image's id and result.
    include_duplicates: bool = False


def _latest_prediction() -> Any:
    return (select(Prediction.image_id, func.max(Prediction.id).label("pid"))
            .group_by(Prediction.image_id).subquery())


def results_query(flt: ResultFilter) -> Select[Image, str, Prediction, ModelVersion]:
    latest = _latest_prediction()
    stmt = (
        select(Image, Study.study_uid, Prediction, ModelVersion)
        .outerjoin(Study, Study.id == Image.study_id)
        .outerjoin(latest, latest.c.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == latest.c.pid)
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
    )
    if flt.batch_id is not None:
        stmt = stmt.where(Image.batch_id == flt.batch_id)
    if flt.study_uid:
        stmt = stmt.where(Study.study_uid == flt.study_uid)
    if flt.patient_pseudonym:
        stmt = stmt.where(Study.patient_pseudonym == flt.patient_pseudonym)
    if flt.state:
        stmt = stmt.where(Image.state == flt.state)
    if flt.label:
        stmt = stmt.where(Prediction.label == flt.label)
    if flt.min_suspicion is not None:
        stmt = stmt.where(Prediction.suspicion >= flt.min_suspicion)
    if flt.model_version:
        stmt = stmt.where(ModelVersion.version == flt.model_version)
    if flt.since:
        stmt = stmt.where(Image.created_at >= flt.since)
    if flt.until:
        stmt = stmt.where(Image.created_at < flt.until)
    stmt = stmt.order_by(Image.id).offset(flt.offset)
    return stmt.limit(flt.limit) if flt.limit else stmt


def list_results(session: Session, flt: ResultFilter) -> list[dict[str, Any]]:
    rows = [_result_row(*found) for found in session.execute(results_query(flt))]
    narrowed = (flt.study_uid, flt.patient_pseudonym, flt.state, flt.label, flt.min_suspicion,
                flt.model_version)
    # Duplicates are not image rows: they cannot be paged with them, so a page has none.
    paged = flt.limit is not None or flt.offset
    if flt.include_duplicates and flt.batch_id is not None and not any(narrowed) and not paged:
        rows.extend(duplicate_rows(session, flt.batch_id))
    return rows


def duplicate_rows(session: Session, batch_id: int) -> list[dict[str, Any]]:
    """The files ``batch_id`` sent that were already known: no new image, no new prediction."""
    latest = _latest_prediction()
    stmt = (
        select(DuplicateSubmission, Image, Study.study_uid, Prediction, ModelVersion)
        .join(Image, Image.id == DuplicateSubmission.image_id)
        .outerjoin(Study, Study.id == Image.study_id)
        .outerjoin(latest, latest.c.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == latest.c.pid)
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(DuplicateSubmission.batch_id == batch_id)
        .order_by(DuplicateSubmission.id)
    )
    rows = []
    for duplicate, image, study_uid, pred, model in session.execute(stmt):
        row = _result_row(image, study_uid, pred, model)
        row.update(
            batch_id=batch_id, source=duplicate.source, state=ErrorCode.DUPLICATE.value,
            error_code=ErrorCode.DUPLICATE.value,
            error_message=f"Already submitted as image {image.id} (batch {image.batch_id}, "
                          f"{image.state}); not processed again. The result shown is that "
                          "image's.",
        )
        rows.append(row)
    return rows


def _result_row(image: Image, study_uid: str | None, pred: Prediction | None,
                model: ModelVersion | None) -> dict[str, Any]:
    done = image.state == ImageState.DONE.value and pred is not None
    return {
        "image_id": image.id, "batch_id": image.batch_id, "source": image.source,
        "state": image.state, "error_code": image.error_code,
        "error_message": image.error_message, "study_uid": study_uid,
        "sop_instance_uid": image.sop_instance_uid, "laterality": image.laterality,
        "view": image.view,
        "label": pred.label if done and pred else None,
        "p_normal": pred.p_normal if done and pred else None,
        "p_benign": pred.p_benign if done and pred else None,
        "p_malignant": pred.p_malignant if done and pred else None,
        "suspicion": pred.suspicion if done and pred else None,
        "model_version": f"{model.name}:{model.version}" if done and model else None,
    }


@dataclass(frozen=True)
class BatchStatus:
    batch_id: int
    name: str | None
    created_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    images_per_minute: float | None
    eta_seconds: float | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("processing", 0)

    def as_row(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "name": self.name, "total": self.total,
            **{s.value: self.counts.get(s.value, 0) for s in ImageState},
            "images_per_minute": None if self.images_per_minute is None
            else round(self.images_per_minute, 1),
            "eta_s": None if self.eta_seconds is None else round(self.eta_seconds),
            "created_at": self.created_at, "finished_at": self.finished_at,
        }


def batch_status(session: Session, batch_id: int, *, window_s: int = 300) -> BatchStatus | None:
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    counts = dict(session.execute(
        select(Image.state, func.count()).where(Image.batch_id == batch_id)
        .group_by(Image.state)).all())
    rate = _rate(session, batch, window_s)
    remaining = counts.get("queued", 0) + counts.get("processing", 0)
    eta = remaining / rate * 60 if rate and remaining else (0.0 if not remaining else None)
    return BatchStatus(batch.id, batch.name, as_utc(batch.created_at), as_utc(batch.finished_at),
                       counts, rate, eta)


def _rate(session: Session, batch: Batch, window_s: int) -> float | None:
    """Images finished per minute over the last ``window_s`` seconds of the batch's life."""
    last = as_utc(session.execute(
        select(func.max(Image.finished_at)).where(Image.batch_id == batch.id)).scalar())
    created = as_utc(batch.created_at)
    if last is None or created is None:
        return None
    since = max(last - timedelta(seconds=window_s), created)
    done = session.execute(select(func.count()).where(
        Image.batch_id == batch.id, Image.finished_at >= since)).scalar_one()
    span = (last - since).total_seconds()
    return done / span * 60 if span > 0 and done else None


def recent_batch_ids(session: Session, limit: int = 10) -> list[int]:
    return list(session.execute(select(Batch.id).order_by(Batch.id.desc()).limit(limit)).scalars())


def workers_seen(session: Session, *, within_s: int = 600) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(seconds=within_s)
    stmt = (select(Prediction.worker, func.count(), func.max(Prediction.created_at))
            .where(Prediction.created_at >= since).group_by(Prediction.worker))
    return [{"worker": w, "predictions": n, "last_seen": as_utc(t)}
            for w, n, t in session.execute(stmt)]



def system_health(session: Session, *, lease_s: int) -> dict[str, Any]:
    """What an operator checks first in the morning: is anything stuck, is anyone working."""
    now = utcnow()
    stale = session.execute(select(func.count()).where(
        Image.state == ImageState.PROCESSING.value,
        Image.claimed_at < now - timedelta(seconds=lease_s))).scalar_one()
    oldest = as_utc(session.execute(select(func.min(Image.enqueued_at)).where(
        Image.state == ImageState.QUEUED.value)).scalar())
    workers = workers_seen(session)
    return {
        "stale_claims": int(stale),
        "oldest_queued_age_s": None if oldest is None else round((now - oldest).total_seconds()),
        "workers_seen_10min": ", ".join(f"{w['worker']} ({w['predictions']})" for w in workers)
        or "none",
    }
