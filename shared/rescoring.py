"""Which stored images a model version has not scored yet: what `mammo rescore` re-queues.

After a new model is activated, the images already done keep the old version's
predictions. A centre that wants tonight's worklist, or a study under review, read by the
new model re-queues those images; the worker adds the new version's prediction beside the
old one (one per image per model version), and the exam results are recomputed from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from shared.db.schema import Image, ModelVersion, Prediction, Study
from shared.enums import ImageState


@dataclass(frozen=True)
class RescoreFilter:
    batch_id: int | None = None
    study_uid: str | None = None
    since: datetime | None = None  # submitted at or after (UTC)
    until: datetime | None = None  # submitted before (UTC)

    @property
    def narrowed(self) -> bool:
        return any(v is not None for v in (self.batch_id, self.study_uid, self.since,
                                           self.until))


def not_scored_by(session: Session, model_sha256: str, flt: RescoreFilter) -> list[int]:
    """Done images in ``flt`` with no prediction from the model whose weights hash to
    ``model_sha256`` (under any name or directory it was registered with)."""
    scored = exists().where(and_(
        Prediction.image_id == Image.id,
        Prediction.model_version_id.in_(
            select(ModelVersion.id).where(ModelVersion.sha256 == model_sha256))))
    stmt = select(Image.id).where(Image.state == ImageState.DONE.value, ~scored)
    if flt.batch_id is not None:
        stmt = stmt.where(Image.batch_id == flt.batch_id)
    if flt.study_uid is not None:
        stmt = stmt.where(Image.study_id.in_(
            select(Study.id).where(Study.study_uid == flt.study_uid)))
    if flt.since is not None:
        stmt = stmt.where(Image.created_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(Image.created_at < flt.until)
    return sorted(session.execute(stmt).scalars())


__all__ = ["RescoreFilter", "not_scored_by"]
