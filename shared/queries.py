"""Read-side queries behind ``mammo status`` and ``mammo results``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from models.registry import name_version
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.schema import Batch, DuplicateSubmission, Image, ModelVersion, Prediction, Study
from shared.enums import ImageState
from shared.errors import ReportTargetNotFoundError
from shared.formatting import csv_cell
from shared.imaging.reader_version import READER_VERSION
from shared.timeutil import as_utc

RESULT_KEYS = (
    "image_id", "batch_id", "source", "state", "error_code", "error_message", "study_uid",
    "sop_instance_uid", "laterality", "view", "view_flags", "label", "p_normal", "p_benign",
    "p_malignant", "suspicion", "model_version", "duplicate_of", "model_sha256",
    "burned_in_annotation", "input_notes",
)


class InputNotes(dict[str, str]):
    """A result row's ``input_notes``: how the worker read the file, {kind: sentence}.

    JSON writes it as that object; a CSV cell or a table (``str``) as the sentences, which
    say what they are without their kinds, through the CSV cell guard as any text."""

    def __str__(self) -> str:
        return str(csv_cell("; ".join(self.values())))


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
    # With batch_id (and no other filter, no offset): also a row per file the batch sent
    # again (already known), after the image rows and within the limit, carrying its own
    # source and the original image's state and result, with duplicate_of set to that
    # image's id.
    include_duplicates: bool = False


# The columns a result row needs: selecting them, not whole ORM entities, keeps a 100,000-row
# export from building (and a heatmap blob from loading) per row.
_RESULT_COLUMNS = (
    Image.id.label("image_id"), Image.batch_id, Image.source, Image.state, Image.error_code,
    Image.error_message, Study.study_uid, Image.sop_instance_uid, Image.laterality, Image.view,
    Image.view_flags, Image.burned_in_annotation, Prediction.label, Prediction.p_normal,
    Prediction.p_benign, Prediction.p_malignant, Prediction.suspicion, Prediction.input_notes,
    ModelVersion.name.label("model_name"), ModelVersion.version.label("model_version"),
    ModelVersion.sha256.label("model_sha256"),
)


def with_latest_prediction(stmt: Select[*tuple[Any, ...]], *,
                            inner_study: bool = False) -> Select[*tuple[Any, ...]]:
    """Join each image to its latest prediction (and that prediction's model).

    Latest: the highest id, as every query of an image's current prediction takes it (the
    exam results, reports and notifications: a grouped ``max(Prediction.id)``). A version
    scoring an image again stores a new row (``shared.rescoring.store_predictions``), so
    the newest scoring is the highest id, also after a rollback to an earlier version.
    It is an anti-join (no newer prediction of the same image), which both databases
    run well without statistics, as on a fresh install. Measured on 110,000 images
    (tests/benchmarks/results_query.py): a grouped "max id per image" subquery let SQLite
    drive the join from the label index instead (175 s for ``--label malignant
    --min-score 8``), and a correlated max(id) in the join condition ran for minutes on
    PostgreSQL before its first ANALYZE.
    ``inner_study``: a filter on the study excludes images without one anyway; an inner
    join lets the database start from the study's index instead of scanning every image.
    """
    newer = aliased(Prediction)
    study_join = stmt.join if inner_study else stmt.outerjoin
    return (study_join(Study, Study.id == Image.study_id)
            .outerjoin(Prediction, Prediction.image_id == Image.id)
            .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(~exists().where(newer.image_id == Image.id, newer.id > Prediction.id)))


def _scope_conditions(flt: ResultFilter) -> list[ColumnElement[bool]]:
    """``flt``'s image and study filters (``Study`` must be joined for the study ones);
    its prediction filters need ``with_latest_prediction``'s join."""
    conditions = [
        (flt.batch_id is not None, lambda: Image.batch_id == flt.batch_id),
        (bool(flt.study_uid), lambda: Study.study_uid == flt.study_uid),
        (bool(flt.patient_pseudonym), lambda: Study.patient_pseudonym == flt.patient_pseudonym),
        (bool(flt.state), lambda: Image.state == flt.state),
        (flt.since is not None, lambda: Image.created_at >= flt.since),
        (flt.until is not None, lambda: Image.created_at < flt.until),
    ]
    return [make() for wanted, make in conditions if wanted]


def results_query(flt: ResultFilter) -> Select[*tuple[Any, ...]]:
    stmt = with_latest_prediction(select(*_RESULT_COLUMNS).select_from(Image),
                                   inner_study=bool(flt.study_uid or flt.patient_pseudonym))
    # A row shows a prediction only for a done image (_result_row): one queued to be scored
    # again, or failed since, must not match by the prediction it no longer shows.
    by_prediction = bool(flt.label or flt.model_version) or flt.min_suspicion is not None
    conditions = [
        (by_prediction, lambda: Image.state == ImageState.DONE.value),
        (bool(flt.label), lambda: Prediction.label == flt.label),
        (flt.min_suspicion is not None, lambda: Prediction.suspicion >= flt.min_suspicion),
        (bool(flt.model_version), lambda: _model_version_is(flt.model_version or "")),
    ]
    stmt = stmt.where(*_scope_conditions(flt),
                      *(make() for wanted, make in conditions if wanted))
    stmt = stmt.order_by(Image.id).offset(flt.offset)
    return stmt.limit(flt.limit) if flt.limit else stmt


def _model_version_is(wanted: str) -> ColumnElement[bool]:
    """``VERSION``, or ``NAME:VERSION`` as result rows print ``model_version`` (or
    NAME/VERSION), read as the ``models`` commands read a model's name (``name_version``)."""
    named = name_version(wanted)
    if named is None:
        return ModelVersion.version == wanted
    return and_(ModelVersion.name == named[0], ModelVersion.version == named[1])


# Rows fetched from the database at a time by the streamed listings: a server-side cursor
# on PostgreSQL (``yield_per`` implies ``stream_results``), SQLite's own stepping cursor.
FETCH_BLOCK = 2000


def list_results(session: Session, flt: ResultFilter) -> list[dict[str, Any]]:
    return list(iter_results(session, flt))


def iter_results(session: Session, flt: ResultFilter) -> Iterator[dict[str, Any]]:
    """``list_results``' rows as the database hands them over, ``FETCH_BLOCK`` at a time:
    memory stays flat however many rows (a year's `mammo results --format csv` held 1 GB).
    Iterate it while ``session`` is open."""
    count = 0
    for found in session.execute(results_query(flt).execution_options(yield_per=FETCH_BLOCK)):
        yield _result_row(found)
        count += 1
    narrowed = (flt.study_uid, flt.patient_pseudonym, flt.state, flt.label, flt.min_suspicion,
                flt.model_version)
    # Duplicates follow the batch's image rows. An offset counts image rows only, so a page
    # past the first has none; a limit caps the two together (the table's page of
    # `mammo results --batch N` shows what CSV and JSON show, up to its size).
    if (flt.include_duplicates and flt.batch_id is not None and not any(narrowed)
            and not flt.offset):
        room = None if flt.limit is None else flt.limit - count
        if room is None or room > 0:
            yield from iter_duplicate_rows(session, flt.batch_id, limit=room)


def iter_duplicate_rows(session: Session, batch_id: int, *,
                        limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The files ``batch_id`` sent that were already known: no new image, no new prediction.

    Each row is the original image's (state, error, result: the results contract holds
    for it) under the copy's own source, with ``duplicate_of`` naming the original."""
    stmt = (
        with_latest_prediction(
            select(DuplicateSubmission.source.label("duplicate_source"), *_RESULT_COLUMNS)
            .select_from(DuplicateSubmission)
            .join(Image, Image.id == DuplicateSubmission.image_id))
        .where(DuplicateSubmission.batch_id == batch_id)
        .order_by(DuplicateSubmission.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    for found in session.execute(stmt.execution_options(yield_per=FETCH_BLOCK)):
        row = _result_row(tuple(found)[1:], copy_source=found.duplicate_source)
        row["batch_id"] = batch_id
        yield row


_DONE = ImageState.DONE.value


def _result_row(found: Sequence[Any], *,
                copy_source: str | None = None) -> dict[str, Any]:
    """One ``RESULT_KEYS`` row of a row of ``_RESULT_COLUMNS``; prediction fields only for a
    done image. ``copy_source``: the row of a file sent again, under that path,
    ``duplicate_of`` the image found. Unpacked by position: a year's export builds 500,000
    of them, and a Row's attribute lookups were most of the time."""
    (image_id, batch_id, image_source, state, error_code, error_message, study_uid,
     sop_instance_uid, laterality, view, view_flags, burned_in_annotation, label, p_normal,
     p_benign, p_malignant, suspicion, notes, model_name, model_version,
     model_sha256) = found
    source, duplicate_of = image_source, None
    if copy_source is not None:
        source, duplicate_of = copy_source, image_id
        # The image's reason names the image's file (most messages start with its name,
        # not all): under another path, the row says whose reason it is.
        if error_message and copy_source != image_source:
            error_message = (f"Already submitted as image {image_id} ({image_source}): "
                             f"{error_message}")
    if not (state == _DONE and label is not None):
        label = p_normal = p_benign = p_malignant = suspicion = notes = model_name = None
    shown_model = f"{model_name}:{model_version}" if model_name else None
    # In RESULT_KEYS' order. The model's file (model_sha256), as the registry tells models
    # apart: two can share a NAME:VERSION.
    return {
        "image_id": image_id, "batch_id": batch_id, "source": source, "state": state,
        "error_code": error_code, "error_message": error_message, "study_uid": study_uid,
        "sop_instance_uid": sop_instance_uid, "laterality": laterality, "view": view,
        "view_flags": view_flags, "label": label, "p_normal": p_normal,
        "p_benign": p_benign, "p_malignant": p_malignant, "suspicion": suspicion,
        "model_version": shown_model, "duplicate_of": duplicate_of,
        "model_sha256": model_sha256 if shown_model else None,
        "burned_in_annotation": burned_in_annotation,
        "input_notes": None if notes is None else InputNotes(notes),
    }


def superseded_only(session: Session, flt: ResultFilter) -> bool:
    """Whether ``flt.model_version`` scored images ``flt`` selects (by its other filters)
    but none of those predictions is an image's latest any more (a ``mammo rescore`` or
    another model scored them since): `--model-version` matches the latest prediction
    only, so the listing is empty, which would otherwise read as "this version scored
    nothing here". Call it when the listing came back empty."""
    if not flt.model_version:
        return False
    scope = replace(flt, label=None, min_suspicion=None, offset=0, limit=1)
    if session.execute(results_query(scope)).first() is not None:
        return False  # it is the latest of some: a page past them, or another filter
    any_prediction = aliased(Prediction)
    scored_by_it = (select(any_prediction.id)
                    .join(ModelVersion, ModelVersion.id == any_prediction.model_version_id)
                    .where(any_prediction.image_id == Image.id,
                           _model_version_is(flt.model_version)))
    stmt = select(Image.id).select_from(Image)
    if flt.study_uid or flt.patient_pseudonym:
        stmt = stmt.join(Study, Study.id == Image.study_id)
    stmt = stmt.where(*_scope_conditions(scope), Image.state == _DONE,
                      scored_by_it.exists()).limit(1)
    return session.execute(stmt).first() is not None


# The keys of ``BatchStatus.as_row``: `mammo status --format csv` prints them as its header
# even when there is no batch yet.
BATCH_STATUS_KEYS = ("batch_id", "name", "priority", "total", "copies",
                     *(s.value for s in ImageState), "images_per_minute", "eta_s",
                     "created_at", "finished_at", "models")


@dataclass(frozen=True)
class BatchStatus:
    """``counts``: the batch's own images by state. ``copies``: the files it sent again
    (already known) by their original image's state, as ``mammo results --batch`` lists
    them. The status row's state columns count both: a batch that resubmitted a queued
    image is not done before that image is. Its ``total`` is its own images, as its report
    counts them, and ``copies`` how many it sent again: a batch of copies only has total 0
    and its copies' states, not a total its report contradicts."""

    batch_id: int
    name: str | None
    created_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    images_per_minute: float | None
    eta_seconds: float | None
    copies: dict[str, int] = field(default_factory=dict)
    # Its done images by the model (NAME:VERSION) behind their current result. More than
    # one when workers ran with different models: their scores are not comparable.
    models: dict[str, int] = field(default_factory=dict)
    # "urgent" or "routine": an urgent exam's batch was told from the night's only by its
    # name, if it had one.
    priority: str = "routine"

    @property
    def total(self) -> int:
        """The batch's own images (new work), copies not included."""
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return sum(self.counts.get(s, 0) + self.copies.get(s, 0)
                   for s in (ImageState.QUEUED.value, ImageState.PROCESSING.value))

    def as_row(self) -> dict[str, Any]:
        states = {s.value: self.counts.get(s.value, 0) + self.copies.get(s.value, 0)
                  for s in ImageState}
        return {
            "batch_id": self.batch_id, "name": self.name, "priority": self.priority,
            "total": self.total,
            "copies": sum(self.copies.values()), **states,
            "images_per_minute": None if self.images_per_minute is None
            else round(self.images_per_minute, 1),
            "eta_s": None if self.eta_seconds is None else round(self.eta_seconds),
            "created_at": self.created_at, "finished_at": self.finished_at,
            "models": models_text(self.models),
        }

    @property
    def mixed_models_warning(self) -> str | None:
        if len(self.models) < 2:
            return None
        return (f"batch {self.batch_id} was scored by {len(self.models)} model versions "
                f"({models_text(self.models)}): workers ran with different models, and "
                "scores of different models are not comparable. Restart the odd workers "
                f"with the model in use, then `mammo rescore --batch {self.batch_id}` scores "
                "the rest with it.")


def models_text(models: dict[str, int]) -> str | None:
    """"default:1.8.0" for one model; "default:1.7.0 x 7, default:1.8.0 x 9" for a mix."""
    if len(models) < 2:
        return next(iter(models), None)
    return ", ".join(f"{model} x {count}" for model, count in sorted(models.items()))


def batch_status(session: Session, batch_id: int, *, window_s: int = 300,
                 now: datetime | None = None, lease_s: int | None = None) -> BatchStatus | None:
    """Counts, pace and ETA of one batch. A batch with images left and nothing finished in
    the last ``window_s`` seconds (no worker running, or all stuck) has pace 0 and no ETA:
    an estimate from its last burst of work would promise what is not happening. With
    ``lease_s`` (claims' lease), nor has one that nothing works on now (``_in_progress``):
    a run killed mid-batch left a pace of minutes ago, and an ETA from it while nobody
    holds the work.

    ``now`` (a time on the database's clock) defaults to the database's current time."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    counts = dict(session.execute(
        select(Image.state, func.count()).where(Image.batch_id == batch_id)
        .group_by(Image.state)).all())
    copies = dict(session.execute(
        select(Image.state, func.count()).select_from(DuplicateSubmission)
        .join(Image, Image.id == DuplicateSubmission.image_id)
        .where(DuplicateSubmission.batch_id == batch_id).group_by(Image.state)).all())
    status = BatchStatus(batch.id, batch.name, as_utc(batch.created_at),
                         as_utc(batch.finished_at), counts, None, None, copies,
                         priority=batch.priority)
    remaining = status.remaining
    # While images remain: the pace of the last ``window_s`` up to now, what the ETA needs
    # (0 when stalled). Once none remain: its throughput over all its work, what a night's
    # report quotes, and what status shows from then on.
    # Predictions, claims and finishes are stamped on the database's clock (``worker.
    # pipeline``, ``lifecycle``): judged on it, or a `mammo status` on a host ahead of the
    # server saw a batch being scored with pace 0 and no ETA, one behind no pace at all.
    now = now or (database_now(session) if remaining else None)
    rate = (scoring_rate(session, batch.id, window_s=window_s, until=now)
            if remaining else scoring_rate(session, batch.id))
    eta = remaining / rate * 60 if rate and remaining else (0.0 if not remaining else None)
    if eta and lease_s is not None and now is not None and not _in_progress(
            session, batch.id, now, lease_s):
        eta = None
    return replace(status, images_per_minute=rate, eta_seconds=eta,
                   models=models_of_batch(session, batch.id))


def _in_progress(session: Session, batch_id: int, now: datetime, lease_s: int) -> bool:
    """Whether someone works on the batch (its own images or its copies' originals): one
    of them is under a claim renewed within two heartbeats (live workers renew every
    ``lease_s / 4``), or finished within that time (between two chunks). A holder killed
    a moment ago still looks alive until then: nothing in the database can tell sooner."""
    recent = now - timedelta(seconds=lease_s / 2)
    copied = select(DuplicateSubmission.image_id).where(DuplicateSubmission.batch_id == batch_id)
    working = session.execute(select(Image.id).where(
        or_(Image.batch_id == batch_id, Image.id.in_(copied)),
        or_(and_(Image.state == ImageState.PROCESSING.value, Image.claimed_at >= recent),
            Image.finished_at >= recent)).limit(1)).first()
    return working is not None


def models_of_batch(session: Session, batch_id: int) -> dict[str, int]:
    """{NAME:VERSION: images} behind the current results of the batch's own done images.

    Models are told apart by their file (sha256), as the model registry does: a model
    retrained under the shipped one's NAME:VERSION (`mammo train`'s defaults) is another
    model, named with its sha256's first 12 digits wherever two share a NAME:VERSION."""
    # A grouped max over the batch's own images, not with_latest_prediction's anti-join:
    # bounded by the batch (ix_images_batch_state), where PostgreSQL without statistics ran
    # the anti-join as batch x all predictions (8.5 s per batch on 50,000 images).
    latest = (select(func.max(Prediction.id)).join(Image, Image.id == Prediction.image_id)
              .where(Image.batch_id == batch_id, Image.state == ImageState.DONE.value)
              .group_by(Prediction.image_id))
    stmt = (select(ModelVersion.name, ModelVersion.version, ModelVersion.sha256, func.count())
            .select_from(Prediction)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.id.in_(latest))
            .group_by(ModelVersion.name, ModelVersion.version, ModelVersion.sha256))
    found = {(f"{name}:{version}", sha256): count
             for name, version, sha256, count in session.execute(stmt)}
    labels = model_labels(found)
    return {labels[model]: count for model, count in found.items()}


def model_labels(models: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """How every listing names each (NAME:VERSION, sha256) of ``models``: NAME:VERSION, with
    "(sha256 " and the sha256's first 12 digits ")" added where two of them share one."""
    distinct = set(models)
    shared = Counter(label for label, _ in distinct)
    return {(label, sha256): f"{label} (sha256 {sha256[:12]})" if shared[label] > 1 else label
            for label, sha256 in distinct}


@dataclass(frozen=True)
class ScoringWork:
    """The images a batch scored itself, as its workers stamped them: each of its own images'
    first prediction. ``started``: when the first of them began (its prediction time less
    its decode, preprocess and forward-pass time); ``last``: the last prediction's time."""

    started: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class _FirstPrediction:
    created_at: datetime
    forward_pass_id: Any
    infer_ms: float | None  # its forward pass's whole time (infer_ms x forward_pass_size)
    prepared_ms: float  # its decode and preprocess time


def _first_predictions(session: Session, batch_id: int) -> list[_FirstPrediction]:
    """Each of the batch's own images' first prediction (by id): the batch's own work.

    Copies of earlier images are not its work (their originals were scored by another
    batch), a file refused at intake was never scored, and a later ``mammo rescore`` adds a
    newer prediction and rewrites the image's claim and finish times, but leaves this one
    as it was: so the batch's pace is the pace it kept, whatever happened after."""
    # Read once per batch, driven from the batch's images (ix_images_batch_state) with a
    # per-image min(id) on ix_predictions_image_id_id, then the rows by primary key: a plan
    # no statistics can turn around. ``Prediction.id IN (SELECT min(id) ... GROUP BY
    # image_id)``, four times per batch, ran before PostgreSQL's first ANALYZE (a restored
    # or migrated database) as a parallel scan of every prediction ever stored each time:
    # 126 ms against 8 ms per statement at a year's 323,000 predictions, 90 s for
    # `mammo status --last 100`.
    first = aliased(Prediction)
    first_id = (select(func.min(first.id)).where(first.image_id == Image.id)
                .scalar_subquery())
    ids = [pid for pid in session.scalars(select(first_id).where(Image.batch_id == batch_id))
           if pid is not None]
    found: list[_FirstPrediction] = []
    for block in lifecycle.in_blocks(ids):
        found += [_FirstPrediction(as_utc(at), fp, infer, prepared or 0.0)
                  for _, at, fp, infer, prepared in session.execute(
                      select(Prediction.id, Prediction.created_at, Prediction.forward_pass_id,
                             Prediction.infer_ms * Prediction.forward_pass_size,
                             Prediction.decode_ms + Prediction.preprocess_ms)
                      .where(Prediction.id.in_(block)).order_by(Prediction.id))]
    return found


def _scoring_work(first: list[_FirstPrediction]) -> ScoringWork:
    if not first:
        return ScoringWork(None, None)
    # The earliest (by time, then id: ``first`` is in id order and min keeps the first).
    opening = min(first, key=lambda p: p.created_at)
    # Every image of the first forward pass was decoded and preprocessed before it ran: a
    # batch of one chunk would otherwise seem to take one image's preparation, not the
    # chunk's (taken one after the other: with parallel decoding, a little early).
    prepared_ms = sum(p.prepared_ms for p in first
                      if p.forward_pass_id == opening.forward_pass_id)
    started = opening.created_at - timedelta(
        milliseconds=prepared_ms + (opening.infer_ms or 0))
    return ScoringWork(started, max(p.created_at for p in first))


def scoring_work(session: Session, batch_id: int) -> ScoringWork:
    return _scoring_work(_first_predictions(session, batch_id))


def scoring_rate(session: Session, batch_id: int, *, window_s: int | None = None,
                 until: datetime | None = None) -> float | None:
    """Images the batch scored itself, per minute of that work: from its first image's start
    to ``until`` (default: its last scored image), or over the last ``window_s`` seconds of
    that span. None when it scored nothing (all copies, all refused at intake, nothing
    done yet) or the span is empty.

    The span starts at the work, not at the batch's creation: a batch queued behind others
    waited, and counting the wait as slow processing overstated its ETA. `mammo status`
    and the batch summary both show this figure.
    """
    first = _first_predictions(session, batch_id)
    work = _scoring_work(first)
    end = until or work.last
    if work.started is None or end is None:
        return None
    since = work.started if window_s is None else max(end - timedelta(seconds=window_s),
                                                       work.started)
    span = (end - since).total_seconds()
    if span <= 0:
        return None
    done = sum(1 for p in first if since <= p.created_at <= end)
    return done / span * 60


_MAX_ID = 2**31 - 1  # the ids are INTEGER: PostgreSQL's is 32-bit


def require_batch(session: Session, batch_id: int) -> Batch:
    """The batch, or the error every command gives for a batch number that does not exist
    (an empty answer would read as "nothing there yet")."""
    # A number past the id column's range (a paste, a typo) is no batch either: the driver
    # would refuse to bind it, with a traceback (SQLite's 64-bit, PostgreSQL's 32-bit INTEGER).
    batch = session.get(Batch, batch_id) if 0 < batch_id <= _MAX_ID else None
    if batch is None:
        raise ReportTargetNotFoundError(
            f"no batch with id {batch_id}; `mammo status` lists the recent batches")
    return batch


def require_study(session: Session, study_uid: str) -> None:
    """The error for a study UID the database holds no exam of, as ``require_batch``'s: a
    mistyped UID must not read as "not processed yet"."""
    if session.scalar(select(Study.id).where(Study.study_uid == study_uid).limit(1)) is None:
        raise ReportTargetNotFoundError(
            f"no exam with StudyInstanceUID {study_uid}; `mammo worklist` lists each exam's "
            "study_uid")


def require_patient(session: Session, patient_pseudonym: str) -> None:
    """The error for a patient pseudonym no exam carries (see ``require_study``)."""
    if session.scalar(select(Study.id).where(Study.patient_pseudonym == patient_pseudonym)
                      .limit(1)) is None:
        raise ReportTargetNotFoundError(
            f"no exam of patient pseudonym {patient_pseudonym}; give it as the reports and "
            "`mammo worklist` print it (p-..., never the raw PatientID)")


_MODELS_NAMED = 20  # a database with more registered versions names the first ones


def require_model_version(session: Session, wanted: str) -> None:
    """The error for a model version no registered model has (see ``require_study``): a
    typo ("defualt:1.8.0", "1.8") must not read as "this model scored nothing". Every
    model that ever scored an image here is registered, so none other has results."""
    if session.scalar(select(ModelVersion.id).where(_model_version_is(wanted))
                      .limit(1)) is not None:
        return
    # In the order `mammo models list` lists them: registration's.
    known = list(dict.fromkeys(f"{name}:{version}" for name, version in session.execute(
        select(ModelVersion.name, ModelVersion.version).order_by(ModelVersion.id))))
    if not known:
        raise ReportTargetNotFoundError(
            f"no model version {wanted!r}: no model has scored an image in this database yet")
    named = ", ".join(known[:_MODELS_NAMED])
    more = f" and {len(known) - _MODELS_NAMED} more" if len(known) > _MODELS_NAMED else ""
    raise ReportTargetNotFoundError(
        f"no model version {wanted!r} in this database; those that exist: {named}{more}. "
        "Give VERSION or NAME:VERSION as results print it")


def require_targets(session: Session, flt: ResultFilter) -> None:
    """The not-found error for the batch, study, patient or model version ``flt`` names
    and the database does not hold (an empty listing would read as "nothing there yet")."""
    if flt.batch_id is not None:
        require_batch(session, flt.batch_id)
    if flt.study_uid:
        require_study(session, flt.study_uid)
    if flt.patient_pseudonym:
        require_patient(session, flt.patient_pseudonym)
    if flt.model_version:
        require_model_version(session, flt.model_version)


def finished_batches_copied_from(session: Session, batch_id: int) -> list[Batch]:
    """The other batches whose images ``batch_id`` sent again (its copies' originals'),
    finished, in id order: an interrupted `mammo run`'s batch, which its re-run completes."""
    originals = (select(Image.batch_id).join(DuplicateSubmission,
                                             DuplicateSubmission.image_id == Image.id)
                 .where(DuplicateSubmission.batch_id == batch_id, Image.batch_id != batch_id))
    return list(session.scalars(select(Batch).where(
        Batch.id.in_(originals), Batch.finished_at.is_not(None)).order_by(Batch.id)))


def recent_batch_ids(session: Session, limit: int = 10) -> list[int]:
    return list(session.execute(select(Batch.id).order_by(Batch.id.desc()).limit(limit)).scalars())


# How far past ``now`` a prediction's stamp may be and still count as seen lately: the
# caller's ``now`` may be read a moment before predictions committed since. A stamp further
# ahead is from a clock that has since stepped back (SQLite stamps on its host's clock),
# and would list a worker dead for minutes as scoring until the clock caught up.
SEEN_AHEAD_TOLERANCE = timedelta(minutes=1)


def workers_seen(session: Session, *, within_s: int = 600,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """Workers that wrote predictions lately (not those started since, nor idle; a killed
    one stays listed), with the model versions they used: after
    `mammo models activate` a running worker keeps its model until it restarts, and this is
    where an operator sees which workers still run the old one. ``earlier_release``: how
    many of its predictions were read by another release's readers than this one's
    (``READER_VERSION``; none named: a release before ``predictions.reader_version``): a
    worker left running through the upgrade, still scoring by that release's rules. Before,
    only the unnamed counted, and a worker of the release just before (readers 2, which
    scored upside-down DICOMs as stored) went unreported under readers 3.

    Predictions are stamped on the database's clock (``worker.pipeline``): ``now`` is a time
    on it, by default its current time. One stamped further ahead of it than
    ``SEEN_AHEAD_TOLERANCE`` is not "lately": a clock stepped back since."""
    now = now or database_now(session)
    since = now - timedelta(seconds=within_s)
    stmt = (select(Prediction.worker, ModelVersion.name, ModelVersion.version,
                   ModelVersion.sha256, func.count(), func.max(Prediction.created_at),
                   func.count(case((Prediction.reader_version == READER_VERSION, 1))))
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.created_at >= since,
                   Prediction.created_at <= now + SEEN_AHEAD_TOLERANCE)
            .group_by(Prediction.worker, ModelVersion.name, ModelVersion.version,
                      ModelVersion.sha256)
            .order_by(Prediction.worker, ModelVersion.name, ModelVersion.version))
    seen: dict[str | None, dict[str, Any]] = {}
    for worker, name, version, sha256, n, last, n_current in session.execute(stmt):
        row = seen.setdefault(worker, {"worker": worker, "predictions": 0, "models": [],
                                       "sha256": set(), "last_seen": None,
                                       "earlier_release": 0})
        row["predictions"] += n
        row["earlier_release"] += n - n_current
        row["models"].append(f"{name}:{version}")
        row["sha256"].add(sha256)
        row["last_seen"] = max(filter(None, (row["last_seen"], as_utc(last))), default=None)
    return list(seen.values())



def system_health(session: Session, *, lease_s: int,
                  active_model: str | None = None) -> dict[str, Any]:
    """What an operator checks first in the morning: is anything stuck, is anyone working,
    and on which model. ``active_model``: NAME:VERSION of the activated model, if any."""
    now = database_now(session)  # claims are stamped and judged on it (``lifecycle.claim``)
    processing = Image.state == ImageState.PROCESSING.value
    stale = session.execute(select(func.count()).where(
        processing, Image.claimed_at < now - timedelta(seconds=lease_s))).scalar_one()
    # Live workers renew every lease_s / 4: a claim two beats old is probably a dead
    # worker's, and waits for its lease to end before the sweeper re-sends it.
    unrenewed, expires = session.execute(select(func.count(), func.min(Image.claimed_at)).where(
        processing, Image.claimed_at < now - timedelta(seconds=lease_s / 2),
        Image.claimed_at >= now - timedelta(seconds=lease_s))).one()
    # The sweeper's own measure (``lifecycle.waiting_since``): an image owed a message (the
    # broker failed mid-submit, a re-send failed) has waited since it was registered or
    # last put back in the queue, not since a registration days before a re-score.
    oldest = as_utc(session.execute(select(func.min(lifecycle.waiting_since())).where(
        Image.state == ImageState.QUEUED.value)).scalar())
    workers = workers_seen(session, now=now)
    first_expiry = as_utc(expires)
    return {
        "stale_claims": int(stale),
        "unrenewed_claims": int(unrenewed),  # not yet stale: the worker may be gone
        "unrenewed_resent_from": (first_expiry + timedelta(seconds=lease_s)).isoformat()
        if unrenewed and first_expiry else None,
        "oldest_queued_age_s": None if oldest is None else round((now - oldest).total_seconds()),
        "workers_scored_10min": ", ".join(
            f"{w['worker']} ({w['predictions']}, {' + '.join(w['models'])})" for w in workers)
        or "none",
        "model_active": active_model,
        # A worker keeps the model it started with: after `mammo models activate` these still
        # score with another until they restart (or were started with MAMMO_MODEL set).
        "workers_on_other_models": ", ".join(
            str(w["worker"]) for w in workers if active_model not in w["models"])
        if active_model else None,
        # A worker whose predictions name another reader version than this release's (or
        # none): left running through `mammo db upgrade` (processes already running go on).
        "workers_of_earlier_releases": ", ".join(
            str(w["worker"]) for w in workers if w["earlier_release"]),
    }
