"""Which stored images a model version has not scored last: what `mammo rescore` re-queues;
and how a scoring is stored so that the newest one is the image's current prediction.

After a new model is activated, the images already done keep the old version's
predictions. A centre that wants tonight's worklist, or a study under review, read by the
new model re-queues those images; the worker adds the new version's prediction beside the
old one (one per image per model version), and the exam results are recomputed from it.

An image's current prediction, the one results, the worklist, exam results and reports
read, is its newest row: the highest id (``shared.queries.with_latest_prediction`` and
the grouped ``max(Prediction.id)`` of the exam, report and notification queries). A
version scoring an image it scored before (a rollback: 0.0.1, then 0.0.2, then 0.0.1
again) must make its prediction the newest: ``store_predictions`` replaces that row with
a new one rather than updating it in place, where it kept its old id and the withdrawn
version's stayed current; the exam result's signature (over prediction ids) then changes
too, so its refresh recomputes it.

A release whose readers read some files differently (``READER_VERSION``) leaves the images
an earlier release read with their earlier predictions, the current model's among them:
``reread=True`` also re-queues the done images whose current prediction another reader
version made (NULL: before it was recorded). The new prediction, by the same model version,
replaces that one (one per image per model version).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, select
from sqlalchemy.orm import Session, aliased

from models.registry import ModelSpec
from shared.db.schema import Image, ModelVersion, Prediction, Study
from shared.db.upsert import upsert
from shared.enums import ImageState
from shared.imaging.reader_version import READER_VERSION

# What a prediction row is keyed by: one per image per model version.
PREDICTION_KEY = ("image_id", "model_version_id")
_ID_BLOCK = 900  # ids per IN list: under SQLite's bound-parameter limit


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


def not_scored_by(session: Session, model: ModelSpec, flt: RescoreFilter, *,
                  reread: bool = False) -> list[int]:
    """Done images in ``flt`` whose current prediction is not the model version ``model``'s;
    with ``reread``, also those whose current prediction another reader version made (an
    earlier release's readers, NULL included), whichever model made it.

    A model version is a registered row: name, version and weights (sha256), one metadata
    seal (``models.activation``), so a version that shares its weights with the one that
    scored the images (the same model.keras with a bilateral head) still re-scores them,
    and rolling back to a version that scored them before, since overtaken, re-scores them
    too."""
    return _done_in(session, flt, ~_current_is(model, reread=reread))


def not_current_among(session: Session, model: ModelSpec, image_ids: Sequence[int], *,
                      reread: bool = False) -> list[int]:
    """Those of ``image_ids`` that are done and whose current prediction is not the model
    version ``model``'s (with ``reread``: or not read by this release's readers;
    ``not_scored_by``'s rule): after a re-score, the images it could not score again, which
    keep their earlier result."""
    unique = sorted(set(image_ids))
    found: list[int] = []
    for start in range(0, len(unique), _ID_BLOCK):
        found += session.execute(select(Image.id).where(
            Image.id.in_(unique[start:start + _ID_BLOCK]),
            Image.state == ImageState.DONE.value,
            ~_current_is(model, reread=reread))).scalars()
    return sorted(found)


def _current_is(model: ModelSpec, *, reread: bool = False) -> ColumnElement[bool]:
    """The image's current prediction (its newest) is by ``model``'s version: its name,
    version and weights (one seal each: ``models.activation``); with ``reread``, and was
    read by this release's readers (``READER_VERSION``; not NULL)."""
    mine = select(ModelVersion.id).where(ModelVersion.name == model.name,
                                         ModelVersion.version == model.version,
                                         ModelVersion.sha256 == model.sha256)
    newer = aliased(Prediction)
    current = [Prediction.image_id == Image.id, Prediction.model_version_id.in_(mine),
               ~exists().where(newer.image_id == Prediction.image_id, newer.id > Prediction.id)]
    if reread:
        current.append(Prediction.reader_version == READER_VERSION)  # NULL: not equal
    return exists().where(and_(*current))


def _done_in(session: Session, flt: RescoreFilter, condition: ColumnElement[bool]) -> list[int]:
    stmt = select(Image.id).where(Image.state == ImageState.DONE.value, condition)
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


def store_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (whole prediction rows) as their images' current predictions.

    An image's earlier prediction by the same model version is deleted and the new one
    inserted, with a new, highest id: updated in place it kept its old id, and a newer
    prediction of another version stayed current. The insert still overwrites on a
    conflict (a key written meanwhile: never the newest-id rule's concern, as each save
    holds its images' claims). Caller commits, in the transaction that marks them done."""
    if not rows:
        return
    by_version: dict[Any, list[Any]] = defaultdict(list)
    for row in rows:
        by_version[row["model_version_id"]].append(row["image_id"])
    for version_id, image_ids in by_version.items():
        session.execute(delete(Prediction).where(Prediction.model_version_id == version_id,
                                                 Prediction.image_id.in_(image_ids)),
                        execution_options={"synchronize_session": False})
    upsert(session, Prediction, rows, conflict=PREDICTION_KEY,
           update=[key for key in rows[0] if key not in (*PREDICTION_KEY, "id")])


__all__ = ["PREDICTION_KEY", "RescoreFilter", "not_current_among", "not_scored_by",
           "store_predictions"]
