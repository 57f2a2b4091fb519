"""The work of one chunk, as plain functions: claim, decode, preprocess, infer, save.

No Celery here: ``worker.tasks`` wraps ``process_chunk`` in a task, and the tests call it
directly. One bad image fails alone, with its reason; its neighbours still get predictions.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from models.heatmaps import encode_png
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.lifecycle import ClaimedImage
from shared.db.refusals import unavailable_reason
from shared.enums import ErrorCode
from shared.errors import DatabaseUnavailableError
from shared.exams import owe_exam_refresh, refresh_exam_results, studies_of_images
from shared.imaging.identity import current_location
from shared.imaging.model_input import ModelInputSource
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.imaging.reader_version import READER_VERSION
from shared.imaging.readers.messages import described
from shared.rescoring import current_readers, store_predictions, withdraws_earlier_result
from shared.scoring import label_of, suspicion
from worker.decoding import DecodeFailure, DecodeJob, DecoderCrashed, DecodersUnavailable
from worker.runtime import ModelUnavailableError, WorkerRuntime

log = logging.getLogger(__name__)

REFUND_PATIENCE_S = 60  # how long a refund waits for the database after a failed save


@dataclass
class ChunkResult:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    forward_passes: int = 0
    # Re-scored images that could not be scored again: they stay done, with their earlier
    # result (``_save``); neither ``done`` (no new prediction) nor ``failed``.
    kept: int = 0
    # Of ``failed``: scored images whose earlier result, an earlier release's reading, is
    # withdrawn, as this release's readers refuse their file (``_save``).
    withdrawn: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, "done": self.done, "failed": self.failed,
                "forward_passes": self.forward_passes, "kept": self.kept,
                "withdrawn": self.withdrawn}


@dataclass
class _Prepared:
    image: ClaimedImage
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float
    notes: dict[str, str]


@dataclass
class _Outcome:
    rows: list[dict[str, object]] = field(default_factory=list)
    failures: list[tuple[int, ErrorCode, str]] = field(default_factory=list)


def process_chunk(image_ids: Sequence[int], *, token: str, runtime: WorkerRuntime) -> ChunkResult:
    # The model first, before any image is claimed: a process that cannot load it (raising
    # ``ModelUnavailableError``) failed every chunk after its claims, each charging its
    # images an attempt, until healthy images were quarantined as poison.
    with _unavailable_while("registering the model"):
        runtime.require_model()
    with _claims_kept(runtime, token):
        return _process_chunk(image_ids, token, runtime)


@contextmanager
def _unavailable_while(doing: str) -> Iterator[None]:
    """Raise a database that is away, or that refuses writes (read-only, a privilege
    missing: ``shared.db.refusals``), as ``DatabaseUnavailableError``: the chunk task hands
    its images back and retries, records the failure for `mammo status --health`, and
    leaves them to the sweeper when its retries are spent. A refusal raised anything but
    an ``OperationalError``: the task failed as unexpected, and its message was dropped."""
    try:
        yield
    except DBAPIError as exc:
        unavailable = _as_unavailable(exc, doing)
        if unavailable is None:
            raise
        raise unavailable from exc


def _as_unavailable(exc: DBAPIError, doing: str) -> DatabaseUnavailableError | None:
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    return DatabaseUnavailableError(f"database unavailable while {doing}: {reason}")


def _database_away(exc: DBAPIError) -> bool:
    """Whether ``exc`` is the database away or refusing writes: best-effort work (a
    heartbeat, a refund, an exam refresh) lets it pass."""
    return unavailable_reason(exc) is not None


@contextmanager
def _claims_kept(runtime: WorkerRuntime, token: str) -> Iterator[None]:
    """Renew this chunk's claims every ``claim_heartbeat_s`` while it runs.

    A live worker's images then never look abandoned, however long the chunk takes, and a
    worker killed outright (SIGKILL, a host crash) has its images re-sent by the sweeper
    once four heartbeats pass without renewal, instead of after the chunk's whole time
    limit. Best effort: a database that is briefly away delays a beat, nothing else.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(runtime.settings.claim_heartbeat_s):
            try:
                with runtime.sessions() as session:
                    lifecycle.renew(session, token)
            except DBAPIError as exc:
                if not _database_away(exc):
                    raise

    heart = threading.Thread(target=beat, name=f"claims-{token[:8]}", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join(timeout=10)


def _process_chunk(image_ids: Sequence[int], token: str, runtime: WorkerRuntime) -> ChunkResult:
    result = ChunkResult()
    claimed = _claim(runtime, image_ids, token)
    result.claimed = len(claimed)
    if not claimed:
        return result
    ids = [c.id for c in claimed]
    if not any(c.attempts > 1 for c in claimed):
        try:
            _save(runtime, _run_group(claimed, runtime, result), result, token)
            return result
        except DecoderCrashed as exc:
            log.warning("%s; running chunk %s image by image", exc, token)
        except DecodersUnavailable as exc:
            # No image's fault: every claim handed back, its attempt refunded; the task
            # retries (a TransientError), as after a database outage.
            _refund(runtime, ids, token, why=str(exc))
            raise
    # A redelivered chunk (or one whose decoder process died) may hold the image that kills
    # its worker. Take back the attempt its claims counted, then claim and run one image at
    # a time: only the image actually being worked on when a crash strikes is charged an
    # attempt, and its neighbours finish first. The claims are kept meanwhile (not handed
    # back to the queue): if this worker dies too, the images still waiting lie under a
    # lease that expires and the sweeper re-sends them, not queued with no message at all.
    with _unavailable_while("claiming"), runtime.sessions() as session:
        lifecycle.refund(session, ids, token)
    for n, image_id in enumerate(ids):
        try:
            _run_alone(image_id, token, runtime, result)
        except DecodersUnavailable as exc:
            # This image's claim counted an attempt; those still waiting were refunded above.
            _refund(runtime, [image_id], token, why=str(exc), refunded=ids[n + 1:])
            raise
    return result


def _run_alone(image_id: int, token: str, runtime: WorkerRuntime, result: ChunkResult) -> None:
    """Claim and run one image (held already by ``token``, its attempt refunded, or
    queued); a decoder crash charges it, until it is quarantined."""
    host_reason: str | None = None  # the host ran short on its last try (DecoderCrashed)
    while single := _claim(runtime, [image_id], token):  # empty: someone else took it
        if single[0].attempts > runtime.settings.max_attempts:
            outcome = _Outcome(failures=[(image_id, ErrorCode.POISON,
                                          _crash_message(single[0], host_reason))])
        else:
            try:
                outcome = _run_group(single, runtime, result)
            except DecoderCrashed as exc:
                # The attempt stays counted, and the claim is kept: the next claim under
                # this token charges the image again, until it is quarantined.
                log.warning("image %s: %s", image_id, exc)
                host_reason = exc.host_reason
                continue
        _save(runtime, outcome, result, token)
        return


def _claim(runtime: WorkerRuntime, image_ids: Sequence[int], token: str) -> list[ClaimedImage]:
    with _unavailable_while("claiming"), runtime.sessions() as session:
        return lifecycle.claim(session, image_ids, token=token,
                               lease_s=runtime.settings.claim_lease_s)


def _crash_message(image: ClaimedImage, host_reason: str | None = None) -> str:
    if host_reason:
        return (f"Processing this image was started {image.attempts - 1} times and never "
                f"finished: this host ran short ({host_reason}), no fault of the file. It "
                "is quarantined; raise that limit, then resubmit it (a quarantined image "
                "is tried again when its file is submitted again).")
    return (f"Processing this image was started {image.attempts - 1} times and never finished: "
            "the worker most likely crashed on it (out of memory or a decoder fault). It is "
            "quarantined; check the file, then resubmit it.")


def _job(image: ClaimedImage, runtime: WorkerRuntime) -> DecodeJob:
    return DecodeJob(image.id, ModelInputSource(
        current_location(image.source, image.archived_path, image_id=image.id,
                         identity=image.identity), image.laterality,
        image.spacing_mm, runtime.classifier.input_size, runtime.settings.max_image_pixels,
        image.identity))


def _run_group(group: list[ClaimedImage], runtime: WorkerRuntime, result: ChunkResult) -> _Outcome:
    outcome = _Outcome()
    prepared: list[_Prepared] = []
    decoded = runtime.decoder.decode_all([_job(image, runtime) for image in group])
    for image, item in zip(group, decoded, strict=True):
        if isinstance(item, DecodeFailure):
            outcome.failures.append((image.id, item.code, item.message))
        else:
            prepared.append(_Prepared(image, item.tensor, item.decode_ms, item.preprocess_ms,
                                      item.notes))
    if prepared:
        _infer(prepared, runtime, outcome, result)
    return outcome


def _infer(prepared: list[_Prepared], runtime: WorkerRuntime, outcome: _Outcome,
           result: ChunkResult) -> None:
    classifier = runtime.classifier
    try:
        forward = classifier.predict(np.stack([p.tensor for p in prepared]))
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if len(prepared) > 1:  # find the one image the model chokes on
            log.warning("batched inference failed (%s); retrying image by image", exc)
            for single in prepared:
                _infer([single], runtime, outcome, result)
            return
        log.exception("inference failed for image %s", prepared[0].image.id)
        outcome.failures.append((prepared[0].image.id, ErrorCode.INTERNAL,
                                 f"The model could not score this image: {described(exc)}"))
        return
    result.forward_passes += 1
    pass_id = str(uuid.uuid4())
    per_image_ms = forward.seconds * 1000 / len(prepared)
    heatmaps = forward.heatmaps if forward.heatmaps is not None else [None] * len(prepared)
    for item, probs, heatmap in zip(prepared, forward.probabilities, heatmaps, strict=True):
        p_normal, p_benign, p_malignant = (float(p) for p in probs)
        outcome.rows.append({
            # model_version_id: set by _save, checked in its transaction (model_row_id).
            "image_id": item.image.id,
            "preprocessing_version": PREPROCESSING_VERSION, "reader_version": READER_VERSION,
            "label": label_of(p_normal, p_benign, p_malignant).value,
            "p_normal": p_normal, "p_benign": p_benign, "p_malignant": p_malignant,
            "suspicion": suspicion(p_benign, p_malignant),
            "decode_ms": item.decode_ms, "preprocess_ms": item.preprocess_ms,
            "infer_ms": per_image_ms, "forward_pass_id": pass_id,
            "forward_pass_size": len(prepared), "worker": runtime.worker_name,
            "heatmap_path": None,  # created_at: stamped by _save, on the database's clock
            "heatmap_png": None if heatmap is None else encode_png(heatmap),
            # How the file was read, where it matters (rotated, inverted...): {} if plainly.
            "input_notes": item.notes,
        })


def _save(runtime: WorkerRuntime, outcome: _Outcome, result: ChunkResult, token: str) -> None:
    """Write one group's predictions and failures in a single transaction.

    When the database refuses the write, the group's claims are handed back with their
    attempts refunded before the task retries: the images were not what failed, and each
    retry's claim would otherwise count one more attempt, turning healthy images into
    ``poison`` within a minute of a database that accepts claims but not results.
    """
    done_ids = [int(str(r["image_id"])) for r in outcome.rows]
    attempted = done_ids + [f[0] for f in outcome.failures]
    try:
        with runtime.sessions() as session:
            # The images first, fenced by this claim (their row locks also order a racing
            # writer behind this one); then the predictions of those it still held.
            # Finishes and predictions are stamped on the database's clock, read once for
            # the save: `mammo status`'s pace and ETA and its workers seen judge them on it,
            # and a worker ahead of the server had its recent work counted as none (pace 0,
            # no ETA, not listed), one behind as long past.
            now = database_now(session)
            kept = set(lifecycle.mark_done(session, done_ids, token=token, now=now))
            # The model's row as this transaction sees it, not as the process registered
            # it at start: a database restored under the worker lacks it or gave its id
            # to another model (``model_row_id``).
            model_id = runtime.model_row_id(session) if kept else None
            rows = [{**r, "created_at": now, "model_version_id": model_id}
                    for r in outcome.rows if int(str(r["image_id"])) in kept]
            # The newest scoring of an image is its current prediction: a version scoring
            # it again (a rollback) stores a new row, not its old one updated in place.
            store_predictions(session, rows)
            # An image that already has a prediction is being re-scored (`mammo rescore`;
            # nothing else re-opens a done image). One that cannot be scored again (its
            # file gone, replaced, damaged since; the new model failing on it; this host's
            # fault) keeps its earlier result: it was read and scored, and turning it
            # failed took its result off the results and the worklist and left its exam
            # incomplete. The reason is logged (``_say_kept``) and the re-score counts it
            # (exit 3). Unless this release's readers refuse the file and that result was
            # an earlier release's reading (``withdraws_earlier_result``): a score this
            # release would not give; it fails as a first reading would, and its earlier
            # prediction stays as history, no longer shown (a failed image has no result).
            earlier = current_readers(session, [i for i, _, _ in outcome.failures])
            withdrawn = {image_id for image_id, code, _ in outcome.failures
                         if image_id in earlier
                         and withdraws_earlier_result(code, earlier[image_id])}
            kept_earlier = lifecycle.mark_done(session, sorted(set(earlier) - withdrawn),
                                               token=token, now=now)
            failed = [image_id for image_id, code, message in outcome.failures
                      if (image_id not in earlier or image_id in withdrawn)
                      and lifecycle.mark_failed(session, image_id, code, message, token=token,
                                                now=now)]
            withdrawn_now = [image_id for image_id in failed if image_id in withdrawn]
            touched = sorted(kept) + kept_earlier + failed
            # Committed with the results: the refresh below may be skipped (a busy
            # database) or never run (this worker killed), and the follow-up then redoes it.
            owe_exam_refresh(session, touched)
            session.commit()
        _say_kept(outcome, kept_earlier)
        _say_withdrawn(outcome, withdrawn_now)
        with runtime.sessions() as session:  # after that commit: see finish_batches
            finished = lifecycle.finish_batches(session, lifecycle.batch_ids_of(session, touched))
            session.commit()
    except DBAPIError as exc:
        unavailable = _as_unavailable(exc, "saving")
        if unavailable is None:
            raise
        _refund(runtime, attempted, token)
        raise unavailable from exc
    except ModelUnavailableError as exc:
        # The database refuses to register the model again: no image's fault.
        _refund(runtime, attempted, token, why=str(exc))
        raise
    if len(touched) < len(attempted):
        log.warning("%d image(s) of this chunk were taken over by another worker while this "
                    "one was held up (its claim had expired): results discarded here",
                    len(attempted) - len(touched))
    result.done += len(rows)
    result.failed += len(failed)
    result.kept += len(kept_earlier)
    result.withdrawn += len(withdrawn_now)
    changed = _refresh_exams(runtime, touched)
    # After the commits: notifications never hold or undo results (and never raise).
    runtime.notifier.exams_changed(changed)
    runtime.notifier.images_scored(sorted(kept))  # those of no exam: alerted on their own
    runtime.notifier.batches_finished(finished)


def _say_kept(outcome: _Outcome, kept: list[int]) -> None:
    """One warning per reason for the re-scored images that keep their earlier result:
    which images, and why they could not be scored again."""
    _say_by_reason(outcome, kept, "could not be scored again and keep their earlier result")


def _say_withdrawn(outcome: _Outcome, withdrawn: list[int]) -> None:
    """One warning per reason for the re-scored images now failed, their earlier result
    (an earlier release's reading) withdrawn."""
    _say_by_reason(outcome, withdrawn, "read by an earlier release are refused by this "
                   "release's readers: now failed, their earlier result withdrawn")


def _say_by_reason(outcome: _Outcome, image_ids: list[int], what: str) -> None:
    by_code: dict[ErrorCode, list[tuple[int, str]]] = {}
    for image_id, code, message in outcome.failures:
        if image_id in image_ids:
            by_code.setdefault(code, []).append((image_id, message))
    for code, images in by_code.items():
        ids = ", ".join(str(image_id) for image_id, _ in images[:10])
        more = f" and {len(images) - 10} more" if len(images) > 10 else ""
        first = "" if len(images) == 1 else "the first: "
        log.warning("%d image(s) %s (image id(s) %s%s): %s; %s%s", len(images), what, ids,
                    more, code.value, first, images[0][1])


def _refund(runtime: WorkerRuntime, image_ids: list[int], token: str, *,
            why: str = "saving failed", refunded: Sequence[int] = ()) -> None:
    """Hand the claims back with their attempts refunded, retrying while the database is
    away for up to ``REFUND_PATIENCE_S``: a save cut by an outage would otherwise leave
    each image charged an attempt per retry, and healthy images quarantined as poison
    after a flapping connection (probe: 8 of 8 at MAMMO_MAX_ATTEMPTS=1 after a 6 s cut).
    A longer outage leaves one attempt counted; the worker waits here meanwhile, having
    nothing it could save anyway. ``refunded``: claims held whose attempt was taken back
    already (``lifecycle.refund``), handed back as they are. Also when decoder processes
    cannot start (``DecodersUnavailable``: ``why`` names the limit to raise)."""
    deadline = time.monotonic() + REFUND_PATIENCE_S
    delay = 0.5
    while True:
        try:
            with runtime.sessions() as session:
                released = lifecycle.release(session, image_ids, token, refund=True)
                released += lifecycle.release(session, refunded, token, refund=False)
        except DBAPIError as exc:
            if not _database_away(exc):
                raise
            if time.monotonic() + delay > deadline:
                log.warning("%s, and the database stayed away for %d s: the attempt stays "
                            "counted for %d image(s)", why, REFUND_PATIENCE_S,
                            len(image_ids))
                return
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
            continue
        if released:
            log.warning("%s; %d image(s) handed back, attempts refunded", why, len(released))
        return


def _refresh_exams(runtime: WorkerRuntime, image_ids: list[int]) -> set[int]:
    """Recompute exam results touched by this group, in their own transaction; return the
    studies whose result changed (candidates for an alert).

    Kept apart from the prediction write, and best effort: the save recorded the refresh
    as owed (``owe_exam_refresh``), and whatever this one leaves owed the next follow-up
    recomputes (each worker's sweeper, the watcher, `mammo recover`, a report command), so
    losing a race (another process wrote the same version first) or a busy database must
    neither undo saved predictions nor hold the chunk.
    """
    if not image_ids:
        return set()
    try:
        with runtime.sessions() as session, _short_lock_wait(session):
            studies = studies_of_images(session, image_ids)
            if not studies:
                return set()
            changes = refresh_exam_results(session, studies,
                                           timeout_s=runtime.settings.exam_timeout_s)
            session.commit()
            return {change.study_id for change in changes}
    except IntegrityError:
        log.info("exam results for images %s were refreshed concurrently", image_ids[:3])
    except DBAPIError as exc:
        if not _database_away(exc):
            raise
        log.warning("exam results not refreshed now (%s); they stay owed, and the next "
                    "follow-up recomputes them (a worker's sweeper, every "
                    "MAMMO_SWEEP_INTERVAL_S; the watcher; `mammo recover`; a report command)",
                    str(exc.orig).splitlines()[0] if exc.orig else exc)
    return set()


@contextmanager
def _short_lock_wait(session: Session) -> Iterator[None]:
    """On SQLite, wait at most 2 s for the write lock (e.g. behind a watcher's burst)."""
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    session.execute(text("PRAGMA busy_timeout=2000"))
    try:
        yield
    finally:
        session.rollback()
        session.execute(text("PRAGMA busy_timeout=60000"))  # as shared.db.engine sets it
