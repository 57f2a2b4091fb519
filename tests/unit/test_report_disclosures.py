"""What the worklist, results and reports say beside the scores: exams that wait for missing
views, images with burned-in text, the model file behind a NAME:VERSION, and a batch's
images per day counted once each."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import insert

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.db.schema import Batch, Image, ModelVersion, Prediction, Study
from shared.reports.worklist import exam_pdf_path
from tests.helpers.cli import run_cli

TIMEOUT_S = 1800.0  # MAMMO_EXAM_TIMEOUT_S's default
# A model retrained under the shipped one's NAME:VERSION: an old database can hold both.
_MODEL = {"name": "default", "version": "1.8.0", "preprocessing_version": "2",
          "classes": ["normal", "benign", "malignant"], "input_size": [512, 512]}
MODELS = [{**_MODEL, "id": 1, "sha256": "a" * 64, "path": "/models/shipped"},
          {**_MODEL, "id": 2, "sha256": "b" * 64, "path": "/models/retrained"}]


@pytest.fixture
def now() -> datetime:
    """Taken as the test starts, not at collection: the suite runs for many minutes before
    a test, and an exam's wait for its missing views (30 min) is measured from this."""
    return datetime.now(UTC)


@pytest.fixture
def url(tmp_path: Path, now: datetime) -> str:
    url = f"sqlite:///{tmp_path / 'mammo.db'}"
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), MODELS)
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": now}])
    engine.dispose()
    return url


def _exam(url: str, uid: str, views: list[str], *, sent: datetime, model_id: int = 1,
          burned_in: tuple[str, ...] = ()) -> list[int]:
    """Study ``uid`` with these views ("L-CC"...) sent at ``sent``, scored at once; the
    views in ``burned_in`` have BurnedInAnnotation YES. Returns the image ids."""
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    with engine.begin() as conn:
        study = conn.execute(insert(Study).returning(Study.id),
                             [{"study_uid": uid, "patient_pseudonym": f"p-{uid}",
                               "created_at": sent}]).scalar_one()
        ids = conn.execute(insert(Image).returning(Image.id), [
            {"identity": f"{uid}-{view}", "batch_id": 1, "study_id": study,
             "source": f"/in/{uid}/{view}.dcm", "format": "dicom", "laterality": view[0],
             "view": view[2:], "state": "done", "attempts": 1, "created_at": sent,
             "finished_at": sent + timedelta(seconds=2), "burned_in_annotation":
             True if view in burned_in else None} for view in views]).scalars().all()
        conn.execute(insert(Prediction), [_prediction(i, model_id, sent) for i in ids])
    engine.dispose()
    return list(ids)


def _prediction(image_id: int, model_id: int, at: datetime) -> dict[str, Any]:
    return {"image_id": image_id, "model_version_id": model_id, "preprocessing_version": "2",
            "label": "benign", "p_normal": 0.2, "p_benign": 0.7, "p_malignant": 0.1,
            "suspicion": 8, "decode_ms": 10.0, "preprocess_ms": 10.0, "infer_ms": 10.0,
            "forward_pass_id": f"fp-{image_id}-{model_id}", "forward_pass_size": 1,
            "created_at": at + timedelta(seconds=2)}


def _mammo(args: list[str], url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           **env: str) -> Result:
    result = run_cli(args, monkeypatch, tmp_path, database_url=url,
                     report_dir=str(tmp_path / "reports"), **env)
    assert result.exit_code == 0, result.output
    return result


def _due(sent: datetime) -> str:
    """When an exam whose last image was ``sent`` is listed, as the notes print it."""
    return f"{sent + timedelta(seconds=TIMEOUT_S):%Y-%m-%d %H:%M} UTC"


def test_exams_waiting_for_missing_views_are_counted_with_when_they_are_listed(
        url: str, now: datetime, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    first, last = now - timedelta(minutes=10), now - timedelta(minutes=4)
    _exam(url, "1.2.9.1", ["L-CC", "R-CC"], sent=first)
    _exam(url, "1.2.9.2", ["L-CC", "R-CC", "L-MLO"], sent=last)
    note = (f"2 exam(s) wait for missing views until {_due(first)} (the last until "
            f"{_due(last)}): "
            "MAMMO_EXAM_TIMEOUT_S (1800 s) after an exam's last image, it is listed as "
            "incomplete")
    listed = _mammo(["worklist", "--format", "json"], url, monkeypatch, tmp_path)
    # The JSON stays an array of exams: the note goes to stderr, as the in-flight one does.
    assert json.loads(listed.stdout) == [] and note in listed.stderr
    table = _mammo(["worklist"], url, monkeypatch, tmp_path)
    assert note in " ".join(table.stdout.split())
    written = _mammo(["report", "worklist", "--format", "csv", "-o", str(tmp_path / "w.csv")],
                     url, monkeypatch, tmp_path)
    assert note in " ".join(written.stderr.split())
    # Once their wait is over they are listed, and nothing is said to wait.
    listed = _mammo(["worklist", "--format", "json"], url, monkeypatch, tmp_path,
                    exam_timeout_s="60")
    assert len(json.loads(listed.stdout)) == 2 and "wait for missing views" not in listed.stderr


def test_an_exam_pdf_written_while_views_were_awaited_is_flagged_with_what_rewrites_it(
        url: str, now: datetime, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    sent = now - timedelta(minutes=10)
    _exam(url, "1.2.9.1", ["L-CC", "R-CC"], sent=sent)
    exam = tmp_path / "exam.json"
    _mammo(["report", "exam", "1.2.9.1", "--format", "json", "-o", str(exam)], url,
           monkeypatch, tmp_path)
    due = datetime.fromisoformat(json.loads(exam.read_text())["awaits_missing_views_until"])
    assert due == sent + timedelta(seconds=TIMEOUT_S)
    _mammo(["report", "exam", "1.2.9.1"], url, monkeypatch, tmp_path)  # as `mammo run` does
    assert exam_pdf_path(tmp_path / "reports", "1.2.9.1").is_file()
    # The wait ends: the exam is listed, incomplete, and its PDF predates that result.
    after = _mammo(["worklist", "--format", "json"], url, monkeypatch, tmp_path,
                   exam_timeout_s="60")
    [row] = json.loads(after.stdout)
    stale = [f for f in row["flags"] if f.startswith("the exam PDF predates this result")]
    assert stale and "mammo worklist --write-reports" in stale[0], row["flags"]


def test_burned_in_annotation_shows_in_results_the_worklist_and_the_exam_json(
        url: str, now: datetime, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    ids = _exam(url, "1.2.9.1", ["L-CC", "R-CC", "L-MLO", "R-MLO"], sent=now,
                burned_in=("R-CC",))
    _exam(url, "1.2.9.2", ["L-CC", "R-CC", "L-MLO", "R-MLO"], sent=now)
    rows = json.loads(_mammo(["results", "--format", "json"], url, monkeypatch,
                             tmp_path).stdout)
    assert [r["image_id"] for r in rows if r["burned_in_annotation"]] == [ids[1]]
    listed = json.loads(_mammo(["worklist", "--format", "json"], url, monkeypatch,
                               tmp_path).stdout)
    flagged = {r["study_uid"]: [f for f in r["flags"] if "burned-in annotation" in f]
               for r in listed}
    assert flagged["1.2.9.2"] == []
    [flag] = flagged["1.2.9.1"]
    assert f"image(s) {ids[1]} (BurnedInAnnotation YES)" in flag and "patient" in flag
    exam = tmp_path / "exam.json"
    _mammo(["report", "exam", "1.2.9.1", "--format", "json", "-o", str(exam)], url,
           monkeypatch, tmp_path)
    views = json.loads(exam.read_text())["views"]
    assert [v["image_id"] for v in views if v["burned_in_annotation"]] == [ids[1]]


def test_two_models_under_one_name_and_version_are_told_apart_in_exports(
        url: str, now: datetime, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    shipped = _exam(url, "1.2.9.1", ["L-CC", "R-CC"], sent=now - timedelta(hours=1))
    retrained = _exam(url, "1.2.9.2", ["L-CC", "R-CC"], sent=now - timedelta(hours=1),
                      model_id=2)
    rows = json.loads(_mammo(["results", "--format", "json"], url, monkeypatch,
                             tmp_path).stdout)
    assert {r["image_id"]: r["model_sha256"] for r in rows} == {
        **dict.fromkeys(shipped, "a" * 64), **dict.fromkeys(retrained, "b" * 64)}
    assert {r["model_version"] for r in rows} == {"default:1.8.0"}
    csv_out = _mammo(["results", "--format", "csv"], url, monkeypatch, tmp_path).stdout
    assert "model_sha256" in csv_out.splitlines()[0] and "b" * 64 in csv_out
    batch = tmp_path / "batch.json"
    _mammo(["report", "batch", "1", "--format", "json", "-o", str(batch)], url, monkeypatch,
           tmp_path)
    assert json.loads(batch.read_text())["models"] == [
        "default:1.8.0 (sha256 aaaaaaaaaaaa)", "default:1.8.0 (sha256 bbbbbbbbbbbb)"]
    worklist = tmp_path / "worklist.json"
    _mammo(["report", "worklist", "--format", "json", "-o", str(worklist)], url, monkeypatch,
           tmp_path)
    assert len(json.loads(worklist.read_text())["models"]) == 2


def test_a_batch_counts_each_image_once_per_day_after_a_rescore(
        url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
    ids = _exam(url, "1.2.9.1", ["L-CC", "R-CC", "L-MLO", "R-MLO"], sent=first)
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    with engine.begin() as conn:  # `mammo rescore` of two images the next day
        conn.execute(insert(Prediction), [_prediction(i, 2, first + timedelta(days=1))
                                          for i in ids[:2]])
    engine.dispose()
    batch = tmp_path / "batch.json"
    _mammo(["report", "batch", "1", "--format", "json", "-o", str(batch)], url, monkeypatch,
           tmp_path)
    summary = json.loads(batch.read_text())
    assert summary["per_day"] == {"2026-12-04": 2, "2026-12-05": 2}
    assert sum(summary["per_day"].values()) == sum(summary["by_class"].values())
