"""Exam grouping: the images of one study (StudyInstanceUID) become one exam-level result.

An exam is *complete* when its 4 standard views (L-CC, R-CC, L-MLO, R-MLO) are done. It is
*incomplete*, scored on what was scored and flagged, never silently presented as a full
exam, as soon as every standard view has arrived but one failed, or when the exam timeout
passes first (no image of the study arrived for ``timeout_s``) with views still missing.

Where the model version has a bilateral head (``models.bilateral``) and a view was scored on
both sides, each breast's image is first read against the other side's (the image's own
prediction row stays as the model gave it; the exam result says ``bilateral`` per breast).
Then the result per breast and for the exam is the maximum over the views: a lesion is
usually seen in one view of one breast, so averaging would dilute exactly the finding a
reader needs. (Nothing better has been measured for the maximum: the real data sets
available hold single views, not four-view exams.) Its label is likewise the gravest of its
views' labels (malignant, then benign, then normal), whichever view the suspicion comes
from: the suspicion counts P(benign) at half weight, so the most suspicious view can be
labelled normal beside a view labelled benign, and a "normal" breast or exam must never
stand on a view the model holds more likely abnormal than not.

The bilateral head lowers a breast's score when the other breast scores high: it was fitted
on data whose findings are nearly always one-sided, so a cancer in each breast lowers both.
The scores stay as validated, but each breast also keeps its own-view score
(``own_suspicion``, ``own_p_malignant``), and a breast whose own views called a finding
(``FINDING_ALONE`` or more) and was lowered by the other breast is flagged, so the reader
reads both (and the worklist ranks the exam by the own-view score).

``refresh_exam_results`` is idempotent and cheap: it recomputes only from the rows, compares
a signature of its inputs with the current result, and writes a new version only when
something changed (a late image, a re-run). The superseded version is kept.

A save that changes an image records, in its own transaction, that its exam's result is owed
a refresh (``owe_exam_refresh``); a refresh that computes the result settles it. What a
skipped or interrupted refresh leaves owed, ``refresh_due_exams`` (the follow-up) redoes.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, case, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.bilateral import BilateralHead
from shared.db.clock import database_now
from shared.db.lifecycle import ACTIVE_STATES, in_blocks
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction, Study
from shared.db.upsert import insert_missing
from shared.enums import ImageState, Label
from shared.scoring import label_of, suspicion
from shared.timeutil import as_utc

log = logging.getLogger(__name__)

STANDARD_VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")
# More than any night's batch; studies not yet due stay pending and cost one cheap pass.
_REFRESH_LIMIT = 100_000
COMPLETE, INCOMPLETE = "complete", "incomplete"
# The screening views: an image of any other view (ML, XCCL, a ViewPosition the reader did
# not know, stored as OTHER) is scored but stands in for none and is paired with nothing.
SCREENING_VIEWS = ("CC", "MLO")
# An own-view suspicion from which a lowering by the other breast is flagged: from 5 the
# image's own p_malignant + p_benign / 2 is 0.4 or more, a finding about as likely as not.
# Below it the own views call no finding, so lowering them hides none. Any lowering from
# it counts: the head lowers a breast only when the other one scores high, which is the
# both-breasts case its training data (one-sided findings) never taught it.
FINDING_ALONE = 5
_BLOCK = 400  # studies per query: stays under SQLite's bound-parameter limit

__all__ = [
    "FINDING_ALONE", "STANDARD_VIEWS", "ExamChange", "ExamImage", "ExamSummary",
    "lowered_by_other_breast", "owe_exam_refresh", "read_against_other_breast",
    "refresh_due_exams", "refresh_exam_results", "studies_awaiting_result",
    "studies_of_images", "summarise", "view_flags_text", "view_label",
]


@dataclass(frozen=True)
class ExamImage:
    """One image of a study as the aggregation sees it (prediction fields None unless done)."""

    image_id: int
    laterality: str | None
    view: str | None
    state: str
    arrived_at: datetime
    prediction_id: int | None = None
    label: str | None = None
    p_malignant: float | None = None
    suspicion: int | None = None
    p_normal: float | None = None
    p_benign: float | None = None
    model_version_id: int | None = None
    bilateral: Mapping[str, object] | None = None  # the model version's head, if it has one
    read_with_other_breast: bool = False
    view_flags: str | None = None  # "magnification,spot_compression": a supplementary view
    # The image's own scores where reading it against the other breast replaced them.
    own_suspicion: int | None = None
    own_p_malignant: float | None = None

    @property
    def view_key(self) -> str | None:
        if self.laterality in ("L", "R") and self.view:
            return f"{self.laterality}-{self.view}"
        return None

    @property
    def screening_key(self) -> str | None:
        """The standard view this image stands for; None for a supplementary view (spot,
        magnification, stereotactic, rolled, implant-displaced...) or a view other than CC
        and MLO: it is scored, but it neither completes the exam nor is read against the
        other breast's view."""
        if self.view_flags or self.view not in SCREENING_VIEWS:
            return None
        return self.view_key

    @property
    def suspicion_alone(self) -> int | None:
        """The suspicion of this image's own view, before any bilateral reading."""
        return self.own_suspicion if self.read_with_other_breast else self.suspicion

    @property
    def p_malignant_alone(self) -> float | None:
        return self.own_p_malignant if self.read_with_other_breast else self.p_malignant

    @property
    def scored(self) -> bool:
        return self.state == ImageState.DONE.value and self.suspicion is not None


@dataclass(frozen=True)
class ExamSummary:
    status: str
    reason: str
    label: str | None
    p_malignant: float | None
    suspicion: int | None
    per_breast: dict[str, Any]
    views: list[str]
    missing_views: list[str]
    flags: list[str]
    n_images: int
    n_failed: int
    signature: str


@dataclass(frozen=True)
class ExamChange:
    study_id: int
    version: int
    status: str
    superseded: int | None  # the version it replaced
    reason: str = ""  # the result's (``summarise``): "timeout" when a view never came

    @property
    def timed_out(self) -> bool:
        """Written because a missing view's wait ran out, not because a save changed the
        exam (a refresh owed after a save, or the save's own)."""
        return self.reason == "timeout"


def view_label(laterality: str | None, view: str | None) -> str:
    """A view as reports name it: "L-CC", "?-CC" where the laterality is unknown."""
    if laterality and view:
        return f"{laterality}-{view}"
    return f"{laterality or '?'}-{view or '?'}"


def view_flags_text(view_flags: str | None) -> str:
    """Stored view flags as a reader reads them: "magnification, spot compression"."""
    return (view_flags or "").replace(",", ", ").replace("_", " ")


def read_against_other_breast(images: Sequence[ExamImage]) -> list[ExamImage]:
    """``images`` with each scored image re-read against its counterpart (same view, other
    side, same model version with a bilateral head), when it has one."""
    ready = [i for i in images if i.scored and i.bilateral and i.screening_key
             and i.p_normal is not None and i.p_benign is not None and i.p_malignant is not None]
    reread: dict[int, ExamImage] = {}
    for image, other in _counterparts(ready):
        head = BilateralHead.from_config(dict(image.bilateral or {}))
        p_n, p_b, p_m = (float(v) for v in head.apply(_probs(image), _probs(other))[0])
        reread[image.image_id] = replace(
            image, label=label_of(p_n, p_b, p_m).value, p_malignant=p_m,
            suspicion=suspicion(p_b, p_m), p_normal=p_n, p_benign=p_b,
            read_with_other_breast=True, own_suspicion=image.suspicion,
            own_p_malignant=image.p_malignant)
    return [reread.get(i.image_id, i) for i in images]


def _counterparts(ready: Sequence[ExamImage]) -> list[tuple[ExamImage, ExamImage]]:
    """(image, the other breast's image it is read against) for every image of a view
    scored on both sides by one model version.

    A retake (two L-CCs) leaves no image unread: each of them is read against the other
    side's view, and that side is read against its own first image (lowest id) of the
    view, so a retake adds its own evidence and changes no other image's reading.
    (``models.bilateral.partners``, for training, pairs only one image per side.)"""
    by_view: dict[tuple[int | None, str | None], dict[str, list[ExamImage]]] = {}
    for image in ready:
        if image.laterality in ("L", "R"):
            by_view.setdefault((image.model_version_id, image.view), {}).setdefault(
                image.laterality, []).append(image)
    pairs = []
    for sides in (s for s in by_view.values() if len(s) == 2):
        for side, other in (("L", "R"), ("R", "L")):
            first = min(sides[other], key=lambda i: i.image_id)
            pairs += [(image, first) for image in sides[side]]
    return pairs


def _repeated_views(images: Sequence[ExamImage]) -> list[str]:
    """A flag per standard view scored more than once (a retake, or a file sent twice under
    new UIDs): the reader should know which images the breast's score is over. (A failed
    copy is not counted: it is flagged as failed, and scores nothing.)"""
    by_view: dict[str, list[int]] = defaultdict(list)
    for image in images:
        if image.scored and image.screening_key:
            by_view[image.screening_key].append(image.image_id)
    return [f"{len(ids)} {key} images (retake?): images {', '.join(map(str, sorted(ids)))}"
            for key in STANDARD_VIEWS if len(ids := by_view.get(key, [])) > 1]


def _probs(image: ExamImage) -> np.ndarray:
    return np.array([[image.p_normal, image.p_benign, image.p_malignant]], np.float64)


def _worst(images: Sequence[ExamImage]) -> ExamImage | None:
    scored = [i for i in images if i.scored]
    if not scored:
        return None
    return max(scored, key=lambda i: (i.suspicion or 0, i.p_malignant or 0.0, -i.image_id))


# Labels from the least to the gravest: a breast's and an exam's label is its views' gravest.
_GRAVITY = (Label.NORMAL.value, Label.BENIGN.value, Label.MALIGNANT.value)


def _gravest_label(images: Sequence[ExamImage]) -> str | None:
    """The gravest label of the scored ``images`` (None when none is scored): not the label
    of the most suspicious view, which can read normal beside a view labelled benign."""
    labels = [i.label for i in images if i.scored and i.label is not None]
    return max(labels, key=lambda label: (_GRAVITY.index(label) if label in _GRAVITY
                                          else len(_GRAVITY)), default=None)


def _breast(images: Sequence[ExamImage]) -> dict[str, Any] | None:
    worst = _worst(images)
    if worst is None:
        return None
    scored = [i for i in images if i.scored]
    return {
        # The gravest of its views' labels; the suspicion and probabilities their maxima.
        "label": _gravest_label(scored), "suspicion": worst.suspicion,
        "p_malignant": max(i.p_malignant or 0.0 for i in scored),
        # The probability of any finding (1 - P(normal)): the worklist gives it beside
        # P(malignant), as every report gives probabilities, not verdicts.
        "p_abnormal": max((1.0 - i.p_normal for i in scored if i.p_normal is not None),
                          default=None),
        "views": sorted({i.screening_key for i in scored if i.screening_key}),
        "image_ids": sorted(i.image_id for i in scored),
        "bilateral": any(i.read_with_other_breast for i in images),
        # Its views' own scores, unread against the other breast (the same when unread).
        "own_suspicion": max(i.suspicion_alone or 0 for i in scored),
        "own_p_malignant": max(i.p_malignant_alone or 0.0 for i in scored),
    }


def lowered_by_other_breast(own: object, reread: object) -> bool:
    """Whether the bilateral reading lowered (to ``reread``) a breast whose own views
    called a finding (``own``); False where either is unknown (a result stored before
    own-view scores were kept)."""
    return (isinstance(own, int) and isinstance(reread, int)
            and own >= FINDING_ALONE and reread < own)


def read_first_suspicion(exam: ExamResult) -> int | None:
    """The score an exam is ranked and alerted by: its suspicion, raised to a breast's
    own-view suspicion of a finding that the other breast's score lowered. A cancer in each
    breast must neither rank below a one-sided one nor miss the alert threshold."""
    ranks = [exam.suspicion, *(b.get("own_suspicion") for b in (exam.per_breast or {}).values()
                               if isinstance(b, dict)
                               and lowered_by_other_breast(b.get("own_suspicion"),
                                                           b.get("suspicion")))]
    known = [r for r in ranks if isinstance(r, int)]
    return max(known) if known else None


def read_first_suspicion_sql() -> ColumnElement[int | None]:
    """``read_first_suspicion`` in SQL, for the worklist's order and the alerts' query.
    Results stored before own-view scores were kept rank by their suspicion."""
    rank: ColumnElement[int | None] = ExamResult.suspicion.expression
    for side in ("L", "R"):
        own = ExamResult.per_breast[(side, "own_suspicion")].as_integer()
        # NULL counts as none (SQLite's max() of a NULL is NULL).
        raised = case((own >= FINDING_ALONE, own))
        rank = case((raised > rank, raised), else_=rank)
    return rank


def _lowered_flags(per_breast: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A flag per breast whose finding the other breast's score lowered (see the module)."""
    names = {"L": "left", "R": "right"}
    return [f"{side} breast: suspicion {b['own_suspicion']} alone, {b['suspicion']} read "
            f"against the {names[other]} breast (a finding in the other breast lowers this "
            "one's score): read both"
            for side, other in (("L", "R"), ("R", "L"))
            if (b := per_breast.get(side)) is not None
            and lowered_by_other_breast(b["own_suspicion"], b["suspicion"])]


def _off_screening_flags(images: Sequence[ExamImage]) -> list[str]:
    """Flags for scored images that stand for no screening view, each saying where its
    score counts: in its breast's (laterality known) and the exam's, or the exam's only."""
    scored = [i for i in images if i.scored]
    sideless = [i for i in scored if i.laterality not in ("L", "R")]
    flags = [f"{len(sideless)} image(s) without laterality: counted in the exam score only"
             ] if sideless else []
    for image in scored:
        if image.laterality not in ("L", "R") or image.screening_key:
            continue
        breast = "left" if image.laterality == "L" else "right"
        if image.view_flags:
            what = f"a supplementary view ({view_flags_text(image.view_flags)})"
        elif image.view:
            what = "not a screening view (CC or MLO)"
        else:
            what = "without a view"
        flags.append(f"{image.view_key or image.laterality} (image {image.image_id}) is "
                     f"{what}: counted in the {breast} breast's and the exam score, not as a "
                     "screening view")
    return flags


def _signature(status: str, images: Sequence[ExamImage]) -> str:
    parts = [status, *(f"{i.image_id}:{i.prediction_id or 0}:{i.state}"
                       for i in sorted(images, key=lambda i: i.image_id))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def summarise(images: Sequence[ExamImage], *, timeout_s: float,
              now: datetime) -> ExamSummary | None:
    """The exam result for these images, or None while it is not due yet.

    Not due: an image is still queued or processing, or a standard view has not arrived and
    the study's last image arrived less than ``timeout_s`` ago. A view that arrived and
    failed is not awaited: nothing more will come for it, and the exam's other views must
    reach the read-first list now, not after the timeout.
    """
    if not images or any(i.state in ACTIVE_STATES for i in images):
        return None
    images = read_against_other_breast(images)
    done_views = {i.screening_key for i in images if i.scored and i.screening_key}
    arrived_views = {i.screening_key for i in images if i.screening_key}
    missing = [v for v in STANDARD_VIEWS if v not in done_views]  # no scored image
    awaited = [v for v in missing if v not in arrived_views]
    failed_views = [v for v in missing if v in arrived_views]
    last_arrival = max(i.arrived_at for i in images)
    if awaited and now - last_arrival < timedelta(seconds=timeout_s):
        return None
    if not missing:
        status, reason = COMPLETE, "four_views"
    else:
        status, reason = INCOMPLETE, "timeout" if awaited else "failed_views"
    failed = [i for i in images if i.state == ImageState.FAILED.value]
    flags = []
    if awaited:
        flags.append(f"incomplete: missing {', '.join(awaited)}")
    if failed_views:
        flags.append(f"incomplete: {', '.join(failed_views)} failed, not scored")
    if failed:
        flags.append(f"{len(failed)} image(s) failed and are not scored")
    flags += _off_screening_flags(images)
    models = {i.model_version_id for i in images if i.scored}
    if len(models) > 1:  # e.g. a model activated between the exam's two batches
        flags.append(f"views scored by {len(models)} different model versions (see each "
                     "view's model): not read against each other")
    flags += _repeated_views(images)
    per_breast = {side: b for side in ("L", "R")
                  if (b := _breast([i for i in images if i.laterality == side])) is not None}
    flags += _lowered_flags(per_breast)
    worst = _worst(images)
    return ExamSummary(
        status=status, reason=reason, label=_gravest_label(images),
        p_malignant=max((i.p_malignant or 0.0 for i in images if i.scored), default=None),
        suspicion=worst.suspicion if worst else None, per_breast=per_breast,
        views=sorted(done_views), missing_views=missing, flags=flags, n_images=len(images),
        n_failed=len(failed), signature=_signature(status, images),
    )


def _load_images(session: Session, study_ids: list[int]) -> dict[int, list[ExamImage]]:
    in_studies = select(Image.id).where(Image.study_id.in_(study_ids))
    latest = (select(Prediction.image_id, func.max(Prediction.id).label("pid"))
              .where(Prediction.image_id.in_(in_studies))
              .group_by(Prediction.image_id).subquery())
    stmt = (
        select(Image.study_id, Image.id, Image.laterality, Image.view, Image.state,
               Image.created_at, Prediction.id, Prediction.label, Prediction.p_malignant,
               Prediction.suspicion, Prediction.p_normal, Prediction.p_benign,
               Prediction.model_version_id, ModelVersion.bilateral, Image.view_flags)
        .where(Image.study_id.in_(study_ids))
        .outerjoin(latest, latest.c.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == latest.c.pid)
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
    )
    grouped: dict[int, list[ExamImage]] = defaultdict(list)
    for row in session.execute(stmt):
        sid, iid, lat, view, state, created, pid, label, p_mal, susp, p_n, p_b, mv, head, \
            flags = row
        if sid is None:
            continue
        # created_at is NOT NULL, and on the database's clock, as the time-out judges it.
        grouped[sid].append(ExamImage(iid, lat, view, state, as_utc(created),
                                      pid, label, p_mal, susp, p_n, p_b, mv, head,
                                      view_flags=flags))
    return grouped


def _store(session: Session, study_id: int, summary: ExamSummary,
           current: ExamResult | None, now: datetime) -> ExamChange | None:
    if current is not None and current.signature == summary.signature:
        return None
    version = current.version + 1 if current else 1
    row = {"study_id": study_id, "version": version, "created_at": now,
           **{k: getattr(summary, k) for k in (
               "status", "reason", "label", "p_malignant", "suspicion", "per_breast",
               "views", "missing_views", "flags", "n_images", "n_failed", "signature")}}
    # Two refreshers racing (watcher and worker) both try this version: one insert wins.
    if not insert_missing(session, ExamResult, [row], conflict=("study_id", "version"),
                          returning=ExamResult.id):
        return None
    if current is not None:
        session.execute(update(ExamResult).where(ExamResult.id == current.id)
                        .values(superseded_at=now),
                        execution_options={"synchronize_session": False})
    return ExamChange(study_id, version, summary.status, current.version if current else None,
                      summary.reason)


def refresh_exam_results(session: Session, study_ids: Iterable[int], *, timeout_s: float,
                         now: datetime | None = None) -> list[ExamChange]:
    """Compute the exam results that are due or changed; return what was written.

    A study whose result is now computed from its current images has its owed refresh
    settled (``owe_exam_refresh``); one not due yet, or whose new version another refresher
    wrote first, stays owed. Flushes but does not commit: the caller owns the transaction.
    """
    # Image times are the database's (registration stamps created_at with database_now):
    # judge them on its clock.
    now = now or database_now(session)
    changes: list[ExamChange] = []
    for block in in_blocks(study_ids, _BLOCK):
        # Read before the images: a save committed after this read stays owed, whatever
        # this refresh then sees of it.
        owed = {sid: (inputs, done) for sid, inputs, done in session.execute(
            select(Study.id, Study.exam_inputs_seq, Study.exam_result_seq)
            .where(Study.id.in_(block)))}
        images = _load_images(session, block)
        current = {r.study_id: r for r in session.execute(
            select(ExamResult).where(ExamResult.study_id.in_(block),
                                     ExamResult.superseded_at.is_(None))).scalars()}
        for study_id in block:  # in id order, as every writer of these rows locks them
            summary = summarise(images.get(study_id, []), timeout_s=timeout_s, now=now)
            if summary is None:
                continue
            existing = current.get(study_id)
            change = _store(session, study_id, summary, existing, now)
            if change is not None:
                changes.append(change)
            if change is not None or (existing is not None
                                      and existing.signature == summary.signature):
                _settle(session, study_id, *owed.get(study_id, (0, 0)))
    session.flush()
    return changes


def owe_exam_refresh(session: Session, image_ids: Iterable[int]) -> None:
    """Record that the exams of these images owe a refresh, in the caller's transaction:
    the one that saves what changed them, so that neither a refresh skipped afterwards (a
    busy database) nor a worker killed before it leaves an exam result missing a view."""
    for block in in_blocks(studies_of_images(session, image_ids), _BLOCK):
        # Row locks taken in id order: two savers of the same exams never wait in a circle.
        session.execute(select(Study.id).where(Study.id.in_(block)).order_by(Study.id)
                        .with_for_update())
        session.execute(update(Study).where(Study.id.in_(block))
                        .values(exam_inputs_seq=Study.exam_inputs_seq + 1),
                        execution_options={"synchronize_session": False})


def _settle(session: Session, study_id: int, inputs_seq: int, result_seq: int) -> None:
    """The result now stands for the saves counted up to ``inputs_seq`` (read before the
    images): later ones stay owed."""
    if inputs_seq <= result_seq:
        return
    session.execute(update(Study).where(Study.id == study_id,
                                        Study.exam_result_seq < inputs_seq)
                    .values(exam_result_seq=inputs_seq),
                    execution_options={"synchronize_session": False})


def studies_of_images(session: Session, image_ids: Iterable[int]) -> set[int]:
    found: set[int] = set()
    for block in in_blocks(image_ids, _BLOCK):
        found.update(s for s in session.execute(
            select(Image.study_id).where(Image.id.in_(block), Image.study_id.is_not(None))
            .distinct()).scalars() if s is not None)
    return found


def studies_awaiting_result(session: Session, *, limit: int = 500) -> list[int]:
    """Studies that have images but no exam result yet (candidates for the timeout), and
    studies owed a refresh that no refresh has done yet (``owe_exam_refresh``)."""
    # Driven from studies in id order, the first ``limit`` taken as found: every sweep of
    # every worker and every report runs it. The union it replaces read every image (an
    # anti-join of all images against all exam results, then a sort): 0.25-0.6 s at a
    # year's 300,000 images, 0.75 s before PostgreSQL's first ANALYZE; this reads the
    # studies and their results' study ids (0.16 s unanalysed), and a study's images only
    # for a study without a result: one index probe (LIMIT 1, which PostgreSQL does not
    # turn into a hash of every image as it may an EXISTS). Both tests stay: a study's
    # images can await the timeout with nothing owed (no worker saved any of them yet, or
    # registration refused them all), so exam_inputs_seq alone does not tell it.
    has_result = select(ExamResult.id).where(ExamResult.study_id == Study.id).exists()
    an_image = (select(Image.study_id).where(Image.study_id == Study.id).limit(1)
                .scalar_subquery())
    stmt = (select(Study.id)
            .where(or_(Study.exam_inputs_seq > Study.exam_result_seq,
                       and_(~has_result, an_image.is_not(None))))
            .order_by(Study.id).limit(limit))
    return list(session.execute(stmt).scalars())


def refresh_due_exams(session: Session, *, timeout_s: float) -> list[ExamChange]:
    """Give due exams their result: those timed out while no watcher ran, and those whose
    refresh after a save was skipped or cut off (still owed). Best effort, commits.

    Read commands call this before listing, and the workers' sweeper on its timer (so that
    an incomplete exam's alert does not wait for someone to open the worklist). A busy
    database or a concurrent refresher must not stop either: the exams concerned are simply
    refreshed on the next call.
    """
    try:
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text("PRAGMA busy_timeout=2000"))
        studies = studies_awaiting_result(session, limit=_REFRESH_LIMIT)
        changes = refresh_exam_results(session, studies, timeout_s=timeout_s)
        session.commit()
        return changes
    except (IntegrityError, OperationalError) as exc:
        session.rollback()
        log.warning("due exam results not refreshed: %s", type(exc).__name__)
        return []
