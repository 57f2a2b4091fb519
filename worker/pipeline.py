"""The work of one chunk, as plain functions: claim, decode, preprocess, infer, save.

No Celery here: ``worker.tasks`` wraps ``process_chunk`` in a task, and the tests call it
directly. One bad image fails alone, with its reason; its neighbours still get predictions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.heatmaps import encode_png
from shared.db import lifecycle
from shared.db.lifecycle import ClaimedImage
from shared.db.schema import Prediction
from shared.db.upsert import upsert
from shared.enums import ErrorCode, Laterality
from shared.errors import DatabaseUnavailableError, InputError
from shared.exams import refresh_exam_results, studies_of_images
from shared.imaging.preprocess import PREPROCESSING_VERSION, preprocess
from shared.imaging.readers import decode
from shared.scoring import label_of, suspicion
from shared.timeutil import utcnow
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_PREDICTION_UPDATE = (
    "preprocessing_version", "label", "p_normal", "p_benign", "p_malignant", "suspicion",
    "decode_ms", "preprocess_ms", "infer_ms", "forward_pass_id", "forward_pass_size",
    "worker", "heatmap_path", "heatmap_png", "created_at",
)


@dataclass
class ChunkResult:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    forward_passes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, "done": self.done, "failed": self.failed,
                "forward_passes": self.forward_passes}


@dataclass
class _Prepared:
    image: ClaimedImage
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float


@dataclass
class _Outcome:
    rows: list[dict[str, object]] = field(default_factory=list)
    failures: list[tuple[int, ErrorCode, str]] = field(default_factory=list)


def process_chunk(image_ids: Sequence[int], *, token: str, runtime: WorkerRuntime) -> ChunkResult:
    result = ChunkResult()
    claimed = _claim(runtime, image_ids, token)
    result.claimed = len(claimed)
    if not any(c.attempts > 1 for c in claimed):
        if claimed:
            _save(runtime, _run_group(claimed, runtime, result), result)
        return result
    # A redelivered chunk may hold the image that killed the last worker. Hand the claims
    # back, then claim and run one image at a time: only the image actually being worked on
    # when a crash strikes is charged an attempt, and its neighbours finish first.
    with runtime.sessions() as session:
        lifecycle.release(session, [c.id for c in claimed], token, refund=True)
    for image_id in [c.id for c in claimed]:
        single = _claim(runtime, [image_id], token)
        if not single:
            continue  # someone else took it meanwhile
        if single[0].attempts > runtime.settings.max_attempts:
            outcome = _Outcome(failures=[(image_id, ErrorCode.POISON, _crash_message(single[0]))])
        else:
            outcome = _run_group(single, runtime, result)
        _save(runtime, outcome, result)
    return result


def _claim(runtime: WorkerRuntime, image_ids: Sequence[int], token: str) -> list[ClaimedImage]:
    try:
        with runtime.sessions() as session:
            return lifecycle.claim(session, image_ids, token=token,
                                   lease_s=runtime.settings.claim_lease_s)
    except OperationalError as exc:
        raise DatabaseUnavailableError(f"database unavailable while claiming: {exc.orig}") from exc


def _crash_message(image: ClaimedImage) -> str:
    return (f"Processing this image was started {image.attempts - 1} times and never finished: "
            "the worker most likely crashed on it (out of memory or a decoder fault). It is "
            "quarantined; check the file, then resubmit it.")


def _prepare(image: ClaimedImage, runtime: WorkerRuntime) -> _Prepared:
    started = time.perf_counter()
    decoded = decode(Path(image.source), max_pixels=runtime.settings.max_image_pixels)
    if decoded.pixel_spacing_mm is None and image.spacing_mm is not None:
        decoded = dataclasses.replace(decoded, pixel_spacing_mm=image.spacing_mm)
    decoded_at = time.perf_counter()
    tensor = preprocess(decoded, runtime.classifier.input_size,
                        laterality=Laterality.parse(image.laterality))
    return _Prepared(image, tensor, (decoded_at - started) * 1000,
                     (time.perf_counter() - decoded_at) * 1000)


def _run_group(group: list[ClaimedImage], runtime: WorkerRuntime, result: ChunkResult) -> _Outcome:
    outcome = _Outcome()
    prepared: list[_Prepared] = []
    for image in group:
        try:
            prepared.append(_prepare(image, runtime))
        except SoftTimeLimitExceeded:
            raise
        except InputError as exc:
            outcome.failures.append((image.id, exc.code, exc.message))
        except Exception as exc:  # a worker never dies of an input
            log.exception("unexpected error preparing image %s", image.id)
            outcome.failures.append((image.id, ErrorCode.INTERNAL,
                                     f"Unexpected error while reading the image: "
                                     f"{type(exc).__name__}: {exc}"))
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
                                 f"The model could not score this image: "
                                 f"{type(exc).__name__}: {exc}"))
        return
    result.forward_passes += 1
    pass_id = str(uuid.uuid4())
    per_image_ms = forward.seconds * 1000 / len(prepared)
    model_version_id = runtime.model_version_id
    heatmaps = forward.heatmaps if forward.heatmaps is not None else [None] * len(prepared)
    for item, probs, heatmap in zip(prepared, forward.probabilities, heatmaps, strict=True):
        p_normal, p_benign, p_malignant = (float(p) for p in probs)
        outcome.rows.append({
            "image_id": item.image.id, "model_version_id": model_version_id,
            "preprocessing_version": PREPROCESSING_VERSION,
            "label": label_of(p_normal, p_benign, p_malignant).value,
            "p_normal": p_normal, "p_benign": p_benign, "p_malignant": p_malignant,
            "suspicion": suspicion(p_benign, p_malignant),
            "decode_ms": item.decode_ms, "preprocess_ms": item.preprocess_ms,
            "infer_ms": per_image_ms, "forward_pass_id": pass_id,
            "forward_pass_size": len(prepared), "worker": runtime.worker_name,
            "heatmap_path": None, "created_at": utcnow(),
            "heatmap_png": None if heatmap is None else encode_png(heatmap),
        })


def _save(runtime: WorkerRuntime, outcome: _Outcome, result: ChunkResult) -> None:
    """Write one group's predictions and failures in a single transaction."""
    try:
        with runtime.sessions() as session:
            upsert(session, Prediction, outcome.rows, conflict=("image_id", "model_version_id"),
                   update=_PREDICTION_UPDATE)
            done_ids = [int(str(r["image_id"])) for r in outcome.rows]
            lifecycle.mark_done(session, done_ids)
            for image_id, code, message in outcome.failures:
                lifecycle.mark_failed(session, image_id, code, message)
            touched = done_ids + [f[0] for f in outcome.failures]
            lifecycle.finish_batches(session, lifecycle.batch_ids_of(session, touched))
            session.commit()
    except OperationalError as exc:
        raise DatabaseUnavailableError(f"database unavailable while saving: {exc.orig}") from exc
    result.done += len(outcome.rows)
    result.failed += len(outcome.failures)
    _refresh_exams(runtime, touched)


def _refresh_exams(runtime: WorkerRuntime, image_ids: list[int]) -> None:
    """Recompute exam results touched by this group, in their own transaction.

    Kept apart from the prediction write, and best effort: exam results are derived data
    that the next chunk of the study, the watcher or `mammo recover` recompute, so losing a
    race (another process wrote the same version first) or a busy database must neither
    undo saved predictions nor hold the chunk.
    """
    if not image_ids:
        return
    try:
        with runtime.sessions() as session, _short_lock_wait(session):
            studies = studies_of_images(session, image_ids)
            if studies:
                refresh_exam_results(session, studies, timeout_s=runtime.settings.exam_timeout_s)
                session.commit()
    except IntegrityError:
        log.info("exam results for images %s were refreshed concurrently", image_ids[:3])
    except OperationalError as exc:
        log.warning("exam results not refreshed now (%s); they will be on the next pass",
                    str(exc.orig).splitlines()[0] if exc.orig else exc)


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
