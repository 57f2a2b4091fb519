"""Seed a database with many results quickly (bulk inserts, no pipeline): for query tests
and the 100,000-prediction benchmark. Deterministic for a given ``seed``.

Every 4 consecutive images form one study (L-CC, R-CC, L-MLO, R-MLO); about 92% of images
are done, 5% failed, 3% still queued; submissions spread over ``days`` days.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from shared.db.schema import Batch, Image, ModelVersion, Prediction, Study

VIEWS = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))
FAIL_CODES = ("truncated", "unreadable", "for_processing")
START = datetime(2026, 11, 1, tzinfo=UTC)
MODEL_VERSIONS = ("1.0.0", "1.1.0")


@dataclass
class Seeded:
    """What was inserted, as plain dicts, so tests can compute expected answers in Python."""

    images: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[int, dict[str, Any]] = field(default_factory=dict)  # by image id
    studies: list[dict[str, Any]] = field(default_factory=list)


def _chunks(rows: Sequence[dict[str, Any]], size: int = 5000) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _probabilities(rng: random.Random) -> tuple[str, float, float, float, int]:
    raw = [rng.random() ** 2 for _ in range(3)]
    total = sum(raw)
    p = [x / total for x in raw]
    label = ("normal", "benign", "malignant")[p.index(max(p))]
    suspicion = max(1, min(10, 1 + int((p[1] + p[2]) * 10)))
    return label, p[0], p[1], p[2], suspicion


def _image_row(i: int, n_batches: int, days: int, rng: random.Random) -> dict[str, Any]:
    lat, view = VIEWS[i % 4]
    roll = rng.random()
    state = "done" if roll < 0.92 else "failed" if roll < 0.97 else "queued"
    created = START + timedelta(seconds=rng.randrange(days * 86400))
    return {
        "id": i + 1, "identity": f"seed-{i}", "batch_id": 1 + (i // 4) % n_batches,
        "study_id": i // 4 + 1, "source": f"/data/seed/{i}.dcm", "format": "dicom",
        "laterality": lat, "view": view, "state": state, "attempts": 1,
        "error_code": rng.choice(FAIL_CODES) if state == "failed" else None,
        "error_message": "seeded failure" if state == "failed" else None,
        "created_at": created,
        "finished_at": created + timedelta(seconds=2) if state != "queued" else None,
    }


def _prediction_row(image: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    label, pn, pb, pm, suspicion = _probabilities(rng)
    return {
        "id": image["id"], "image_id": image["id"], "model_version_id": 1 + image["id"] % 2,
        "preprocessing_version": "2", "label": label, "p_normal": pn, "p_benign": pb,
        "p_malignant": pm, "suspicion": suspicion, "decode_ms": 30.0, "preprocess_ms": 20.0,
        "infer_ms": 50.0, "forward_pass_id": f"fp-{image['id'] // 16}",
        "forward_pass_size": 16, "created_at": image["finished_at"],
    }


def seed_results(engine: Engine, n_images: int, *, n_batches: int = 10, days: int = 30,
                 seed: int = 7) -> Seeded:
    """Insert ``n_images`` images (and a prediction per done image) into a migrated schema."""
    rng = random.Random(seed)
    out = Seeded()
    n_studies = (n_images + 3) // 4
    out.studies = [{"id": s + 1, "study_uid": f"1.2.3.{s + 1}", "accession_number": f"ACC{s}",
                    "study_date": "20261101", "patient_pseudonym": f"pseudo-{s % 50:03d}",
                    "created_at": START} for s in range(n_studies)]
    out.images = [_image_row(i, n_batches, days, rng) for i in range(n_images)]
    out.predictions = {im["id"]: _prediction_row(im, rng)
                       for im in out.images if im["state"] == "done"}
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [
            {"id": k + 1, "name": "default", "version": v, "sha256": f"{k:064d}",
             "preprocessing_version": "2", "classes": ["normal", "benign", "malignant"],
             "input_size": [512, 512], "path": f"/models/default/{v}"}
            for k, v in enumerate(MODEL_VERSIONS)])
        conn.execute(insert(Batch), [{"id": b + 1, "name": f"night-{b + 1}", "created_at": START}
                                     for b in range(n_batches)])
        for rows in _chunks(out.studies):
            conn.execute(insert(Study), rows)
        for rows in _chunks(out.images):
            conn.execute(insert(Image), rows)
        for rows in _chunks(list(out.predictions.values())):
            conn.execute(insert(Prediction), rows)
    _fix_sequences(engine)
    return out


def _fix_sequences(engine: Engine) -> None:
    """Explicit ids leave PostgreSQL's sequences behind; move them past the seeded rows."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in ("model_versions", "batches", "studies", "images", "predictions"):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 1))")
