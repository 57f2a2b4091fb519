"""``mammo stats``: the original system's history summary and admin overview, as numbers.

Class counts and confidence use each image's latest prediction (what ``mammo results``
shows), so an image re-run with a new model version is counted once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, select
from sqlalchemy.orm import Session

from models.activation import active_version, follows_activation, model_for
from models.registry import integrity_problem
from shared.config import Settings
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction
from shared.db.utc_day import utc_day
from shared.enums import ImageState, Label
from shared.errors import ModelIntegrityError, ModelNotFoundError

# The validation figures a model's metadata.json records (models/train_run.py writes them).
METRIC_KEYS = ("n", "accuracy", "auc_abnormal", "auc_malignant",
               "sensitivity_at_90_specificity", "ece")


@dataclass(frozen=True)
class StatsFilter:
    batch_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def _scope(flt: StatsFilter) -> list[ColumnElement[bool]]:
    """Conditions on ``images`` (none without a filter: no IN over every image id)."""
    conditions = []
    if flt.batch_id is not None:
        conditions.append(Image.batch_id == flt.batch_id)
    if flt.since is not None:
        conditions.append(Image.created_at >= flt.since)
    if flt.until is not None:
        conditions.append(Image.created_at < flt.until)
    return conditions


def _confidence(p: Any) -> Any:
    """max(p_normal, p_benign, p_malignant) in SQL both SQLite and PostgreSQL accept."""
    return case((and_(p.p_normal >= p.p_benign, p.p_normal >= p.p_malignant), p.p_normal),
                (p.p_benign >= p.p_malignant, p.p_benign), else_=p.p_malignant)


def _latest(flt: StatsFilter) -> Select[Any]:
    """The ids of the counted predictions: the latest of every done image in scope."""
    return (select(func.max(Prediction.id))
            .join(Image, Image.id == Prediction.image_id)
            .where(Image.state == ImageState.DONE.value, *_scope(flt))
            .group_by(Prediction.image_id))


def _predictions(session: Session, flt: StatsFilter) -> tuple[dict[str, Any], Counter[int]]:
    """Class counts, mean confidence and per-day counts from ONE pass over the latest
    prediction of every done image in scope (grouped by class, day and model version),
    with how many of them each model version made."""
    latest = _latest(flt)
    p = Prediction.__table__.c
    day = utc_day(p.created_at)  # UTC days, as --since/--until are UTC
    groups = session.execute(
        select(p.label, day, p.model_version_id, func.count(), func.sum(_confidence(p)))
        .where(p.id.in_(latest)).group_by(p.label, day, p.model_version_id)).all()
    classes: Counter[str] = Counter()
    per_day: Counter[str] = Counter()
    by_model: Counter[int] = Counter()
    confidence = 0.0
    for label, when, model_version_id, n, total in groups:
        classes[str(label)] += int(n)
        per_day[str(when)] += int(n)
        by_model[int(model_version_id)] += int(n)
        confidence += float(total or 0.0)
    n_all = sum(classes.values())
    return {
        "predictions": n_all,
        "class_distribution": {c.value: classes.get(c.value, 0) for c in Label},
        "average_confidence": round(confidence / n_all, 4) if n_all else None,
        "per_day": dict(sorted(per_day.items())),
    }, by_model


def _failures(session: Session, flt: StatsFilter, total: int) -> dict[str, Any]:
    rows = session.execute(
        select(Image.error_code, func.count()).where(
            Image.state == ImageState.FAILED.value, *_scope(flt))
        .group_by(Image.error_code).order_by(func.count().desc())).all()
    return {str(code): {"count": int(n), "rate": round(n / total, 4) if total else None}
            for code, n in rows}


def _model_metrics(session: Session, settings: Settings,
                   by_model: Counter[int]) -> dict[str, Any] | None:
    """The model in use and its validation figures, with what makes those figures a poor
    guide to the counted predictions: a model that will not load (``problem``, the check
    `mammo models list` makes), or none of the counted predictions (``by_model``: how
    many each model version made) made by it."""
    problem: str | None
    try:
        spec = model_for(settings, session)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        active = active_version(session)
        if active is None or not follows_activation(settings):
            return None  # MAMMO_MODEL names no model: nothing to show figures of
        # The activated directory is gone or holds another model: no figures to show.
        name, version, sha256, problem = (active.name, active.version, active.sha256,
                                          f"broken: {exc}")
        metadata: dict[str, Any] = {}
    else:
        name, version, sha256, problem = (spec.name, spec.version, spec.sha256,
                                          integrity_problem(spec))
        metadata = spec.metadata
    validation = metadata.get("validation") or {}
    # By its weights: the same model registered under two rows (an older database) counts.
    ids = session.scalars(select(ModelVersion.id).where(ModelVersion.sha256 == sha256))
    by_it = sum(by_model[i] for i in ids)
    counted = sum(by_model.values())
    return {
        "name": name, "version": version, "sha256": sha256, "problem": problem,
        "counted_predictions_by_it": int(by_it),
        "note": None if by_it or not counted else (
            f"none of the {counted} counted predictions was made by this model: its "
            "validation figures do not describe them"),
        "validation": {k: validation.get(k) for k in METRIC_KEYS if k in validation},
        "ci95": validation.get("ci95", {}),
    }


def collect_stats(session: Session, settings: Settings, flt: StatsFilter) -> dict[str, Any]:
    states = dict(session.execute(
        select(Image.state, func.count()).where(*_scope(flt)).group_by(Image.state)).all())
    total = sum(states.values())
    current = [ExamResult.superseded_at.is_(None)]
    if _scope(flt):
        current.append(ExamResult.study_id.in_(select(Image.study_id).where(*_scope(flt))))
    exams = session.execute(select(func.count()).select_from(ExamResult)
                            .where(*current)).scalar_one()
    predictions, by_model = _predictions(session, flt)
    return {
        "totals": {"images": total, **{s.value: int(states.get(s.value, 0)) for s in ImageState},
                   "exam_results": exams},
        **predictions,
        "failures_by_reason": _failures(session, flt, total),
        "failure_rate": round(states.get(ImageState.FAILED.value, 0) / total, 4)
        if total else None,
        "active_model": _model_metrics(session, settings, by_model),
    }


def stats_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The nested stats as (section, key, value) rows for a table or CSV."""
    rows: list[dict[str, Any]] = []

    def walk(section: str, prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(section, f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            rows.append({"section": section, "key": prefix, "value": value})

    for section, value in stats.items():
        walk(section, "" if isinstance(value, dict) else section, value)
    return rows
