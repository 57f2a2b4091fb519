"""Everything a batch summary shows, gathered from the database in one place.

The PDF, the HTML page and the JSON export all render this one object, so they can never
disagree about a number.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.batches import watch_batch_day
from shared.db.schema import Image, Prediction
from shared.db.utc_day import utc_day
from shared.enums import ImageState, Label
from shared.queries import (
    ResultFilter,
    batch_status,
    list_results,
    model_labels,
    require_batch,
)
from shared.reports.worklist import (
    WorklistFilter,
    count_read_alone,
    count_worklist,
    worklist_rows,
)
from shared.synthetic import SYNTHETIC_MANUFACTURER
from shared.timeutil import as_utc, site_day_text

# Rows of a long list that a batch summary (PDF, HTML, the batch e-mail's attachment) shows:
# the first exams to read, the first failed images. The CSV/JSON exports hold every row.
REPORT_ROWS = 50


@dataclass(frozen=True)
class StageTimes:
    """Per-image milliseconds, median and mean, over the batch's predictions."""

    stage: str
    median_ms: float
    mean_ms: float


@dataclass(frozen=True)
class FailureReason:
    """The batch's failed images with one error code, and one of their messages: a night
    where every image failed for one reason reads as one line, not thousands."""

    error_code: str | None
    images: int
    example: str | None  # the message of the first image that failed so


@dataclass(frozen=True)
class BatchSummary:
    batch_id: int
    name: str | None
    created_at: datetime | None
    finished_at: datetime | None
    by_state: dict[str, int]
    by_class: dict[str, int]
    suspicion_counts: dict[int, int]  # 1..10 -> images
    per_day: dict[str, int]  # ISO date of its done images' latest prediction -> images
    images_per_minute: float | None
    stage_times: list[StageTimes]
    failures: list[dict[str, Any]]  # every failed image of its own, in image id order
    failure_reasons: list[FailureReason]  # most images first
    worklist: list[dict[str, Any]]  # the first rows (exams, images read alone) of it
    exams: int  # every exam of the batch with a result (the worklist may show fewer)
    duplicates: int  # files that were copies of images already known: not counted above
    synthetic_images: int  # from the synthetic generator (mammo demo): not patients
    results: list[dict[str, Any]] = field(repr=False)
    read_alone: int = 0  # images of no exam (scored, or failed): each a worklist row too
    # A drop folder's day batch: its site day and the UTC period that is (site_day_text).
    period: str | None = None

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def models(self) -> list[str]:
        """Every model (NAME:VERSION, with its sha256's first digits where two share one)
        that produced one of the results, in name order."""
        return sorted(model_labels((r["model_version"], r["model_sha256"])
                                   for r in self.results if r.get("model_version")).values())

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total"] = self.total
        data["models"] = self.models
        return data


def _stage_times(session: Session, batch_id: int) -> list[StageTimes]:
    stmt = (select(Prediction.decode_ms, Prediction.preprocess_ms, Prediction.infer_ms)
            .join(Image, Image.id == Prediction.image_id).where(Image.batch_id == batch_id))
    rows = session.execute(stmt).all()
    if not rows:
        return []
    return [StageTimes(name, round(statistics.median(col), 1), round(statistics.fmean(col), 1))
            for name, col in zip(("decode", "preprocess", "infer"), zip(*rows, strict=True),
                                 strict=True)]


def _per_day(session: Session, batch_id: int) -> dict[str, int]:
    """The batch's done images by the day of their current (latest) prediction: what the
    class counts count, and `mammo stats --batch` too; a rescore moves an image, it does not
    count it twice."""
    latest = (select(func.max(Prediction.id)).join(Image, Image.id == Prediction.image_id)
              .where(Image.batch_id == batch_id, Image.state == ImageState.DONE.value)
              .group_by(Prediction.image_id))
    day = utc_day(Prediction.created_at)
    stmt = (select(day, func.count()).where(Prediction.id.in_(latest))
            .group_by(day).order_by(day))
    return {str(d): int(n) for d, n in session.execute(stmt)}


def _images_per_minute(session: Session, batch_id: int) -> float | None:
    """`mammo status`'s pace for the batch, taken from it so the two never disagree: the
    images it scored itself per minute of all its work once finished; while images remain,
    over its last 5 minutes up to now (a stalled batch: 0, not the pace of its last burst)."""
    status = batch_status(session, batch_id)
    return None if status is None else status.as_row()["images_per_minute"]


def _failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image_id": r["image_id"], "file": Path(r["source"]).name,
             "error_code": r["error_code"], "error_message": r["error_message"]}
            for r in results if r["state"] == ImageState.FAILED.value]


def _failure_reasons(failures: list[dict[str, Any]]) -> list[FailureReason]:
    counts = Counter(f["error_code"] for f in failures)
    examples: dict[str | None, str | None] = {}
    for f in failures:
        examples.setdefault(f["error_code"], f["error_message"])
    # most_common keeps first-seen order among equal counts: the order is stable.
    return [FailureReason(code, n, examples[code]) for code, n in counts.most_common()]


def synthetic_images(session: Session, batch_id: int) -> int:
    """Images of the batch made by the synthetic generator (`mammo demo`): not patients."""
    return int(session.scalar(select(func.count()).where(
        Image.batch_id == batch_id, Image.manufacturer == SYNTHETIC_MANUFACTURER)) or 0)


def collect_batch_summary(session: Session, batch_id: int, *, report_dir: Path,
                          worklist_limit: int = REPORT_ROWS,
                          zone: tzinfo = UTC) -> BatchSummary:
    """``zone``: MAMMO_SITE_TIMEZONE, which a drop folder's day batch was cut on."""
    batch = require_batch(session, batch_id)
    day = watch_batch_day(batch.name)
    results = list_results(session, ResultFilter(batch_id=batch_id, include_duplicates=True))
    # Counts and failures are the batch's own images; copies are listed (with their
    # original's result) but not counted twice.
    own = [r for r in results if r["duplicate_of"] is None]
    done = [r for r in own if r["state"] == ImageState.DONE.value and r["label"]]
    by_state = Counter(r["state"] for r in own)
    by_class = Counter(r["label"] for r in done)
    scores = Counter(int(r["suspicion"]) for r in done if r["suspicion"] is not None)
    failures = _failures(own)
    whole = WorklistFilter(batch_id=batch_id)
    read_alone = count_read_alone(session, whole)
    return BatchSummary(
        batch_id=batch.id, name=batch.name, created_at=as_utc(batch.created_at),
        finished_at=as_utc(batch.finished_at),
        by_state={s.value: by_state.get(s.value, 0) for s in ImageState},
        by_class={c.value: by_class.get(c.value, 0) for c in Label},
        suspicion_counts={s: scores.get(s, 0) for s in range(1, 11)},
        per_day=_per_day(session, batch_id),
        images_per_minute=_images_per_minute(session, batch_id),
        stage_times=_stage_times(session, batch_id),
        failures=failures,
        failure_reasons=_failure_reasons(failures),
        worklist=worklist_rows(session, WorklistFilter(batch_id=batch_id, limit=worklist_limit),
                               report_dir=report_dir),
        exams=count_worklist(session, whole) - read_alone,
        read_alone=read_alone,
        duplicates=len(results) - len(own),
        synthetic_images=synthetic_images(session, batch_id),
        results=results,
        period=site_day_text(day, zone) if day else None,
    )
