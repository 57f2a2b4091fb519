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
replaces that one (one per image per model version). An image that this release's readers
refuse for what its file holds (``withdraws_earlier_result``) turns failed with their reason,
as a first reading would leave it: its earlier result was a reading this release would not
make, and the results, worklist, exam results and reports show a done image's prediction
only. That prediction stays in the table, as history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, select
from sqlalchemy.orm import Session, aliased

from models.registry import ModelSpec
from shared.db.schema import Image, ModelVersion, Prediction, Study
from shared.db.upsert import upsert
from shared.enums import ErrorCode, ImageState
from shared.imaging.reader_version import READER_VERSION
from shared.timeutil import as_utc

# What a prediction row is keyed by: one per image per model version.
PREDICTION_KEY = ("image_id", "model_version_id")
_ID_BLOCK = 900  # ids per IN list: under SQLite's bound-parameter limit

# A reader's refusals of a file for what it holds (its header, its pixels): this release
# gives the file no score. Not a file gone or replaced (missing_file), nor this host's
# doing, which a re-send or a fix here mends (a decoder not installed, a lower size limit,
# no pseudonym key, a worker crash, the model failing: registration's RETRIED_ALWAYS and
# the like): those say nothing against an earlier reading.
REFUSED_FOR_ITS_CONTENT = frozenset({
    ErrorCode.UNREADABLE, ErrorCode.TRUNCATED, ErrorCode.NOT_DICOM_OR_IMAGE,
    ErrorCode.NOT_MAMMOGRAPHY, ErrorCode.FOR_PROCESSING, ErrorCode.EMPTY_IMAGE,
    ErrorCode.UNEXPECTED_CHANNELS, ErrorCode.MISSING_PIXEL_DATA,
})


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


def current_readers(session: Session, image_ids: Sequence[int]) -> dict[int, str | None]:
    """{image id: the reader version of its current result (NULL: an earlier release's)}
    for those of ``image_ids`` that have one: their newest prediction, made since the image
    was registered. A failed image registered anew (its file sent again, a retry) has none:
    a prediction from before, one withdrawn (``withdraws_earlier_result``), is history, and
    must not come back as its result when the retry fails for another reason."""
    unique = sorted(set(image_ids))
    found: dict[int, str | None] = {}
    for start in range(0, len(unique), _ID_BLOCK):
        newest = (select(func.max(Prediction.id))
                  .where(Prediction.image_id.in_(unique[start:start + _ID_BLOCK]))
                  .group_by(Prediction.image_id))
        rows = session.execute(
            select(Prediction.image_id, Prediction.reader_version, Prediction.created_at,
                   Image.created_at).join(Image, Image.id == Prediction.image_id)
            .where(Prediction.id.in_(newest))).all()
        # Compared here, as UTC: SQLite stores the two in different text forms.
        found.update((image_id, readers) for image_id, readers, scored, registered in rows
                     if as_utc(scored) >= as_utc(registered))
    return found


def withdraws_earlier_result(code: ErrorCode, reader_version: str | None) -> bool:
    """Whether a scored image that fails to be scored again for ``code`` loses its earlier
    result, whose current prediction ``reader_version`` read: this release's readers refuse
    the file for what it holds (``REFUSED_FOR_ITS_CONTENT``), and that result was another
    reader version's reading (an earlier release's, NULL included), a score this release
    would not give (a DICOM whose Bits Stored understates its values, read as a banded
    image). Otherwise (the file gone or replaced, this host's fault, a transient one; or a
    file this release's own readers read and scored, damaged since) it keeps it."""
    return code in REFUSED_FOR_ITS_CONTENT and reader_version != READER_VERSION


def store_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (whole prediction rows) as their images' current predictions.

    An image's earlier prediction by the same model version is deleted and the new one
    inserted, with a new, highest id: updated in place it kept its old id, and a newer
    prediction of another version stayed current. The insert still overwrites on a
    conflict (a key written meanwhile: never the newest-id rule's concern, as each save
    holds its images' claims). Caller commits, in the transaction that marks them done.

    A new id is one no row had: an exam result's signature is over its views' prediction
    ids, and one that came back unchanged left the exam result computed from the deleted
    predictions. SQLite gives a new row the highest id + 1, so the rows deleted at the top
    (a re-read replacing the newest predictions) had their ids given again; there the ids
    are given from the highest before the delete. PostgreSQL's sequence never gives one
    twice. The caller has written already (``mark_done``), so SQLite's write lock is held
    and no other writer takes those ids meanwhile."""
    if not rows:
        return
    by_version: dict[Any, list[Any]] = defaultdict(list)
    for row in rows:
        by_version[row["model_version_id"]].append(row["image_id"])
    reuses_ids = session.get_bind().dialect.name == "sqlite"
    top = session.execute(select(func.max(Prediction.id))).scalar() if reuses_ids else None
    deleted: list[int] = []
    for version_id, image_ids in by_version.items():
        deleted += session.execute(
            delete(Prediction).where(Prediction.model_version_id == version_id,
                                     Prediction.image_id.in_(image_ids))
            .returning(Prediction.id),
            execution_options={"synchronize_session": False}).scalars()
    if deleted and top is not None:
        rows = [{**row, "id": top + n} for n, row in enumerate(rows, start=1)]
    upsert(session, Prediction, rows, conflict=PREDICTION_KEY,
           update=[key for key in rows[0] if key not in (*PREDICTION_KEY, "id")])


__all__ = ["PREDICTION_KEY", "REFUSED_FOR_ITS_CONTENT", "RescoreFilter", "current_readers",
           "not_current_among", "not_scored_by", "store_predictions", "withdraws_earlier_result"]
