"""A small database whose listings exercise every rule of the CSV and JSON writers: text a
spreadsheet would run as a formula, ";" and line breaks, terminal control characters (C0,
DEL, C1), quotes, non-ASCII, numbers and booleans, input notes, images scored again by a
later model, copies sent again, exams whose own-view scores were lowered, ties between an
exam and an image read alone, and (``shared_name``) two model files sharing a NAME:VERSION.

``listing_outputs`` runs `mammo results`, `mammo worklist` and `mammo report worklist` in
every format with the filters a script uses, for comparing outputs byte for byte.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from shared.db.schema import (
    Batch,
    DuplicateSubmission,
    ExamResult,
    Image,
    ModelVersion,
    Prediction,
    Study,
)
from tests.helpers.cli import run_cli

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
NASTY = ["=HYPERLINK(\"http://x\",\"y\")", "a;=1+2", "tab\there", "\x1b[31mred\x07",
         "csi\x9b2J", "del\x7f", "Zürich – ü", "line\nbreak;@x", "\"quoted\", comma", "-3",
         "+1", "@SUM(A1)", "plain", "", "semi;colon", "cr\rlf\r\n-x", "\u2028sep", "bs\x08x"]
VIEWS = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))
PROBS = (0.1, 1 / 3, 1e-05, 0.0, 0.5, 0.25, 2 / 3, 0.9999999999999999)


def _nasty(i: int) -> str:
    return NASTY[i % len(NASTY)]


def seed_listings(engine: Engine, *, shared_name: bool = False) -> None:
    """Batches 1-3 (3 holds copies only), 8 exams, 3 images read alone; model 1.0.0's
    predictions of batch 2 were all replaced by 1.1.0's."""
    models = [("default", "1.0.0", "a" * 64), ("default", "1.1.0", "b" * 64),
              ("other;=x", "2.0", "c" * 64)]
    if shared_name:  # a file retrained under the shipped NAME:VERSION
        models.append(("default", "1.1.0", "d" * 64))
    studies, images, predictions, exams, copies = [], [], [], [], []
    image_id = 0
    for s in range(8):
        studies.append({"id": s + 1, "study_uid": f"1.2.3.{s}" if s % 3 else _nasty(s) + str(s),
                        "accession_number": _nasty(s + 3), "study_date": "20261102",
                        "patient_pseudonym": f"p-{s % 3}" if s % 2 else _nasty(s + 5),
                        "created_at": START})
        batch = 1 if s < 4 else 2
        for v, (lat, view) in enumerate(VIEWS[: 4 if s != 5 else 3]):
            image_id += 1
            state = ("failed" if (s, v) == (2, 1) else "queued" if (s, v) == (6, 3)
                     else "done")
            images.append(_image(image_id, batch, s + 1, lat, view, state))
            if state != "done" and (s, v) != (6, 3):
                continue
            model = 1 if batch == 1 or v % 2 else 2
            predictions.append(_prediction(len(predictions) + 1, image_id, model, image_id))
            if batch == 2:  # scored again: 1.0.0's all superseded in batch 2
                predictions[-1]["model_version_id"] = 1
                predictions.append(_prediction(len(predictions) + 1, image_id,
                                               4 if shared_name and v == 0 else 2,
                                               image_id + 7))
        exams.append(_exam(s + 1, s))
    for k in range(3):  # read alone: one ties with an exam's suspicion and P(malignant)
        image_id += 1
        images.append(_image(image_id, 1 + k % 2, None, ("L", "R", None)[k], "CC", "done"))
        predictions.append(_prediction(len(predictions) + 1, image_id, 3 if k == 2 else 2,
                                       3 if k == 0 else image_id))
    copies = [{"id": c + 1, "batch_id": 3, "image_id": 1 + c * 5,
               "source": f"/again/{_nasty(c + 7)}.dcm", "created_at": START}
              for c in range(4)]
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [
            {"id": k + 1, "name": n, "version": v, "sha256": sha,
             "preprocessing_version": "2", "classes": ["normal", "benign", "malignant"],
             "input_size": [512, 512], "path": f"/models/{k}"}
            for k, (n, v, sha) in enumerate(models)])
        conn.execute(insert(Batch), [{"id": b, "name": f"night-{b}", "created_at": START}
                                     for b in (1, 2, 3)])
        conn.execute(insert(Study), studies)
        conn.execute(insert(Image), images)
        conn.execute(insert(Prediction), predictions)
        conn.execute(insert(ExamResult), exams)
        conn.execute(insert(DuplicateSubmission), copies)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("model_versions", "batches", "studies", "images", "predictions",
                          "exam_results", "duplicate_submissions"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT MAX(id) FROM {table}))")


def _image(i: int, batch: int, study: int | None, lat: str | None, view: str,
           state: str) -> dict[str, Any]:
    return {"id": i, "identity": f"sha256:{i}", "batch_id": batch, "study_id": study,
            "source": f"/in/{_nasty(i)}.dcm", "format": "dicom", "laterality": lat,
            "view": view, "state": state, "attempts": 1,
            "sop_instance_uid": f"1.9.{i}" if i % 4 else None,
            "view_flags": ("magnification", _nasty(i + 1), None)[i % 3],
            "burned_in_annotation": (True, False, None)[i % 3],
            "error_code": "unreadable" if state == "failed" else None,
            "error_message": f"{_nasty(i)} cannot be read" if state == "failed" else None,
            "created_at": START + timedelta(hours=i), "finished_at": START + timedelta(hours=i)}


def _prediction(pid: int, image_id: int, model: int, seed: int) -> dict[str, Any]:
    p_malignant = PROBS[seed % len(PROBS)]
    notes = ({}, {"decoded": f"{_nasty(seed)} read as 12-bit"}, None)[seed % 3]
    return {"id": pid, "image_id": image_id, "model_version_id": model,
            "preprocessing_version": "2", "label": ("normal", "benign", "malignant")[seed % 3],
            "p_normal": 1 - p_malignant, "p_benign": 0.0, "p_malignant": p_malignant,
            "suspicion": 1 + seed % 10, "decode_ms": 1.0, "preprocess_ms": 1.0,
            "infer_ms": 1.0, "forward_pass_id": f"fp-{pid}", "forward_pass_size": 1,
            "input_notes": notes, "created_at": START + timedelta(hours=seed)}


def _exam(study_id: int, s: int) -> dict[str, Any]:
    suspicion = (8, 3, None, 8, 5, 10, 3, 1)[s]
    per_breast = {"L": {"suspicion": suspicion, "label": "malignant", "p_malignant": 0.5,
                        "p_abnormal": PROBS[s], "bilateral": s % 2 == 0,
                        "own_suspicion": 9 if s == 1 else suspicion},
                  "R": {"suspicion": 2, "label": _nasty(s), "p_malignant": None,
                        "own_suspicion": None}}
    return {"id": study_id, "study_id": study_id, "version": 1,
            "status": "complete" if s % 2 else "incomplete", "reason": "complete",
            "label": ("malignant", _nasty(s), None)[s % 3],
            "p_malignant": (0.5, 1 / 3, None, 0.5, 0.5, 0.9, 1 / 3, 0.0)[s],
            "suspicion": suspicion, "per_breast": per_breast if s != 7 else {},
            "views": ["L-CC"], "missing_views": [], "flags": [_nasty(s), _nasty(s + 1)],
            "n_images": 4, "n_failed": 0, "signature": f"sig-{s}",
            "created_at": START + timedelta(days=1)}


# `mammo ...` arguments per output compared; "report:" ones write the file compared.
LISTINGS: dict[str, list[str]] = {
    "results.csv": ["results", "--format", "csv"],
    "results.json": ["results", "--format", "json"],
    "results.table": ["results"],
    "results-batch2.csv": ["results", "--batch", "2", "--format", "csv"],
    "results-batch3.json": ["results", "--batch", "3", "--format", "json"],
    "results-batch3-limit.csv": ["results", "--batch", "1", "--limit", "17", "--format",
                                 "csv"],
    "results-failed.csv": ["results", "--state", "failed", "--format", "csv"],
    "results-since.json": ["results", "--since", "2026-11-03", "--until", "2026-11-04",
                           "--format", "json"],
    "results-mv110.csv": ["results", "--model-version", "1.1.0", "--format", "csv"],
    "results-mv100.json": ["results", "--model-version", "default:1.0.0", "--batch", "1",
                           "--format", "json"],
    "results-mv100-replaced.csv": ["results", "--model-version", "1.0.0", "--batch", "2",
                                   "--format", "csv"],
    "results-page.csv": ["results", "--limit", "5", "--offset", "7", "--format", "csv"],
    "results-page.json": ["results", "--limit", "5", "--offset", "7", "--format", "json"],
    "results-past.json": ["results", "--offset", "500", "--format", "json"],
    "worklist.csv": ["worklist", "--format", "csv"],
    "worklist.json": ["worklist", "--format", "json"],
    "worklist.table": ["worklist"],
    "worklist-limit.csv": ["worklist", "--limit", "4", "--format", "csv"],
    "worklist-batch2.json": ["worklist", "--batch", "2", "--format", "json"],
    "worklist-since.csv": ["worklist", "--since", "2026-11-03", "--format", "csv"],
    "report-worklist.csv": ["report", "worklist", "--format", "csv"],
    "report-worklist.json": ["report", "worklist", "--format", "json"],
    "report-worklist-batch1.json": ["report", "worklist", "1", "--format", "json"],
}


def listing_outputs(url: str, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> dict[str, tuple[int, bytes, bytes]]:
    """{name: (exit code, stdout or the report file, stderr)} of every ``LISTINGS``."""
    outputs = {}
    for name, args in LISTINGS.items():
        target = tmp_path / name
        extra = ["-o", str(target)] if args[0] == "report" else []
        result = run_cli([*args, *extra], monkeypatch, tmp_path, database_url=url,
                         report_dir=str(tmp_path / "reports"))
        out = target.read_bytes() if extra else result.stdout_bytes
        outputs[name] = (result.exit_code, out, result.stderr_bytes)
    return outputs
