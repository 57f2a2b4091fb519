"""What the radiologist reads in the morning (`mammo worklist` in every format, `mammo report
worklist`, the batch summary's read-first table) says what the exam PDF says:

- the system's own doubts about how it read a view (a prediction's ``input_notes``: a
  laterality the pixels contradict, a modality taken on trust, an EXIF rotation...) are
  the row's flags, the exam PDF's very sentences, for exams and for images read alone
  (before: only the PDF had them; a left score was listed with no doubt attached);
- a breast's and an exam's label is the gravest of its views' labels (malignant, benign,
  normal), not the label of its most suspicious view, which can read normal beside a view
  labelled benign (before: mini-MIAS mdb267 R-MLO normal at suspicion 5 and mdb085 R-CC
  benign at 4 made a breast and an exam "normal" at P(abnormal) 0.547);
- an image of no exam that failed is a row of its own, unscored and flagged with its
  reason, where an exam whose every view failed is listed (before: it vanished).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from html import escape
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Study
from shared.exams import ExamImage, refresh_exam_results, summarise
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_html import render_summary_html
from shared.reports.exam_data import load_exam_report
from shared.reports.exam_pdf import _exam_result
from shared.reports.layout import worklist_heading
from shared.reports.worklist import (
    WorklistFilter,
    count_worklist,
    flat_worklist_row,
    worklist_rows,
)
from shared.synthetic import make_exam_set, synth_mammogram
from shared.timeutil import utcnow
from tests.conftest import SHARED_DATA
from tests.helpers.cli import invoke_cli, run_cli
from tests.unit.test_exam_own_view_scores import _exam, _pdf_text
from tests.unit.test_input_notes import _taken_on_trust, _turned_jpeg
from tests.unit.test_worklist_read_alone import LOW, NINE
from tests.unit.test_worklist_read_alone import _image as _alone_image

MIAS = SHARED_DATA / "mini-mias"


def _worklist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str,
              *args: str) -> list[dict]:
    code, out = invoke_cli(["worklist", "--format", "json", *args], monkeypatch, tmp_path,
                           database_url=url, report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    return json.loads(out[:out.rindex("]") + 1])


def _worklist_csv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> list[dict]:
    result = run_cli(["worklist", "--format", "csv"], monkeypatch, tmp_path,
                     database_url=url, report_dir=str(tmp_path / "reports"))
    assert result.exit_code == ExitCode.OK, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


# --- 1. the input notes reach the worklist -----------------------------------------------

def test_a_views_input_notes_are_the_worklist_rows_flags_as_in_the_exam_pdf(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "in"
    exam = make_exam_set(folder, n_exams=1, seed=12)
    dx = _taken_on_trust(exam[0])  # its L-CC scored on trust: a modality note
    turned = _turned_jpeg(folder / "turned.jpg")  # no study: read alone, rotated
    url = f"sqlite:///{tmp_path / 'mammo.db'}"
    code, out = invoke_cli(["run", str(folder)], monkeypatch, tmp_path, database_url=url,
                           model=str(tiny_model_dir), chunk_size="4",
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out

    rows = _worklist(monkeypatch, tmp_path, url)
    study_uid = pydicom.dcmread(dx).StudyInstanceUID
    [exam_row] = [r for r in rows if r["study_uid"] == study_uid]
    [alone_row] = [r for r in rows if r["study_uid"] is None]
    engine = create_engine(url)
    with Session(engine) as session:
        report = load_exam_report(session, study_uid)
        dx_id = session.scalar(select(Image.id).where(Image.source == str(dx)))
        turned_id = session.scalar(select(Image.id).where(Image.source == str(turned)))
        summary = collect_batch_summary(session, 1, report_dir=tmp_path / "reports")
    engine.dispose()
    # The exam PDF's flag, word for word, on the exam's row.
    [pdf_flag] = report.input_note_flags
    assert pdf_flag.startswith(f"L-CC (image {dx_id}) read with notes: (0008,0060) "
                               "Modality is 'DX', not MG")
    assert pdf_flag in exam_row["flags"]
    # And the image read alone carries its own.
    assert alone_row["image_id"] == turned_id
    assert alone_row["flags"][-1] == (
        f"?-? (image {turned_id}) read with notes: EXIF Orientation 6 applied: rotated 90 "
        "degrees clockwise")

    # CSV (and so the table: the same flat row), the report file and the batch summary.
    by_uid = {r["study_uid"]: r for r in _worklist_csv(monkeypatch, tmp_path, url)}
    assert pdf_flag in by_uid[study_uid]["flags"]
    assert "EXIF Orientation 6 applied" in by_uid[""]["flags"]
    target = tmp_path / "read-first.json"
    code, out = invoke_cli(["report", "worklist", "--format", "json", "-o", str(target)],
                           monkeypatch, tmp_path, database_url=url,
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    written = {r["study_uid"]: r for r in json.loads(target.read_text())["worklist"]}
    assert pdf_flag in written[study_uid]["flags"]
    [summary_row] = [r for r in summary.worklist if r["study_uid"] == study_uid]
    assert pdf_flag in summary_row["flags"]
    assert escape(pdf_flag) in render_summary_html(summary)


def _batch_and_two_models(session: Session) -> None:
    session.add_all([Batch(id=1, name="b"), *(ModelVersion(
        id=i, name="m", version=str(i), sha256=str(i) * 64, preprocessing_version="1",
        classes=["a"], input_size=[1, 1], path="/m") for i in (1, 2))])
    session.flush()


def test_only_the_current_predictions_notes_are_flagged(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """A rescore that reads the file plainly clears the flag: the result is over it."""
    from shared.db.schema import Prediction

    with each_backend_sessions() as session:
        _batch_and_two_models(session)
        _exam(session, 1, {"L": NINE, "R": LOW})
        first = session.scalars(select(Prediction).order_by(Prediction.id)).all()
        first[0].input_notes = {"laterality": "header says L, but the breast lies as in an "
                                              "R image: check the laterality; scored as L"}
        first[1].input_notes = {"inverted": "MONOCHROME1: inverted"}
        session.add(Prediction(**{c: getattr(first[1], c) for c in (
            "image_id", "model_version_id", "preprocessing_version", "label", "p_normal",
            "p_benign", "p_malignant", "suspicion", "decode_ms", "preprocess_ms",
            "infer_ms", "forward_pass_id", "forward_pass_size")} | {"model_version_id": 2},
            input_notes={}))
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
        [row] = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        pdf_flags = load_exam_report(session, "1.2.9.1").input_note_flags
    assert pdf_flags == [f"L-CC (image {first[0].image_id}) read with notes: header says L, "
                         "but the breast lies as in an R image: check the laterality; "
                         "scored as L"]
    assert [f for f in row["flags"] if "read with notes" in f] == pdf_flags


# --- 2. a breast's and an exam's label: the gravest of its views' -------------------------

def _view(image_id: int, side: str, view: str, label: str, probs: tuple[float, float, float],
          score: int) -> ExamImage:
    return ExamImage(image_id, side, view, "done", utcnow() - timedelta(hours=1),
                     prediction_id=image_id, label=label, p_malignant=probs[2],
                     suspicion=score, p_normal=probs[0], p_benign=probs[1],
                     model_version_id=1)


def test_the_label_is_the_gravest_of_the_views_not_the_most_suspicious_views() -> None:
    # mdb267 and mdb085 as 1.8.0 scores them (probe F2): the suspicion comes from the
    # normal view (P(benign) counts half), the benign view is more likely abnormal.
    views = [_view(1, "R", "MLO", "normal", (0.503, 0.175, 0.322), 5),
             _view(2, "R", "CC", "benign", (0.453, 0.316, 0.231), 4),
             _view(3, "L", "CC", "normal", (0.9, 0.08, 0.02), 1),
             _view(4, "L", "MLO", "normal", (0.9, 0.08, 0.02), 1)]
    summary = summarise(views, timeout_s=0, now=utcnow())
    assert summary is not None
    right, left = summary.per_breast["R"], summary.per_breast["L"]
    assert (right["suspicion"], right["label"]) == (5, "benign")
    assert (left["suspicion"], left["label"]) == (1, "normal")
    assert (summary.suspicion, summary.label) == (5, "benign")
    # Malignant outranks benign whatever the suspicions.
    graver = [*views[:3], _view(4, "L", "MLO", "malignant", (0.45, 0.05, 0.5), 5)]
    summary = summarise(graver, timeout_s=0, now=utcnow())
    assert summary is not None
    assert summary.label == summary.per_breast["L"]["label"] == "malignant"
    assert summary.per_breast["R"]["label"] == "benign"


def test_the_exam_pdf_names_the_rule_of_its_label(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[1, 1], path="/m")])
        session.flush()
        _exam(session, 1, {"L": (0.503, 0.175, 0.322), "R": (0.453, 0.316, 0.231)})
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
        report = load_exam_report(session, "1.2.9.1")
    shown = " ".join(_pdf_text(f) for f in _exam_result(report))
    assert "gravest view label" in shown and "most suspicious view" not in shown
    assert report.result is not None and report.result.label == "benign"


@pytest.mark.realdata
@pytest.mark.skipif(not MIAS.is_dir(), reason=f"mini-MIAS absent: {MIAS}")
def test_an_exam_of_a_normal_labelled_and_a_benign_labelled_view_is_listed_benign(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Probe F2 with the shipped model: mdb267 (R-MLO) and mdb085 (R-CC) as one exam."""
    manifest = tmp_path / "exam.csv"
    manifest.write_text("path,patient_id,laterality,view,study_id,accession,study_date\n"
                        f"{MIAS / 'mdb267.png'},PX,R,MLO,SX,AX,20261201\n"
                        f"{MIAS / 'mdb085.png'},PX,R,CC,SX,AX,20261201\n")
    url = f"sqlite:///{tmp_path / 'mammo.db'}"
    env = {"database_url": url, "report_dir": str(tmp_path / "reports"),
           "exam_timeout_s": "0.001", "patient_id_key": "k" * 64}
    code, out = invoke_cli(["run", str(MIAS / "mdb267.png"), str(MIAS / "mdb085.png"),
                            "--manifest", str(manifest)], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    code, out = invoke_cli(["results", "--format", "json"], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    views = json.loads(out[:out.rindex("]") + 1])
    worst = max(views, key=lambda v: (v["suspicion"], v["p_malignant"]))
    # The case the probe found: the most suspicious view labelled normal, another benign.
    assert worst["label"] == "normal" and "benign" in {v["label"] for v in views}, views

    [row] = _worklist(monkeypatch, tmp_path, url)
    assert row["suspicion"] == worst["suspicion"]
    assert row["label"] == row["per_breast"]["R"]["label"] == "benign"
    assert row["per_breast"]["R"]["p_abnormal"] > 0.5
    [flat] = _worklist_csv(monkeypatch, tmp_path, url)
    assert flat["label"] == "benign"


# --- 3. a failed image of no exam is listed ------------------------------------------------

def _broken_png(path: Path) -> Path:
    """A PNG cut short: it fails as truncated, at the worker."""
    pixels = synth_mammogram(np.random.default_rng(4), size=(416, 512), bits=8)
    PILImage.fromarray(pixels.astype(np.uint8)).save(path, format="PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_failed_image_of_no_exam_is_listed_with_its_reason(
        backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, tiny_model_dir: Path) -> None:
    url = (f"sqlite:///{tmp_path / 'mammo.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    folder = tmp_path / "in"
    folder.mkdir()
    broken = _broken_png(folder / "broken.png")
    good = _turned_jpeg(folder / "good.jpg")
    code, out = invoke_cli(["run", str(folder)], monkeypatch, tmp_path, database_url=url,
                           model=str(tiny_model_dir), chunk_size="4",
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.IMAGES_FAILED, out

    rows = _worklist(monkeypatch, tmp_path, url)
    by_source = {Path(r["source"]).name: r for r in rows}
    assert list(by_source) == [good.name, broken.name]  # the unscored row last
    failed = by_source[broken.name]
    assert (failed["suspicion"], failed["label"], failed["p_malignant"]) == (None, None, None)
    assert failed["study_uid"] is None and failed["per_breast"] == {}
    [flag] = failed["flags"]
    assert flag.startswith("failed, not scored: truncated: broken.png is a truncated PNG")
    assert flag.endswith("; this image belongs to no exam (no study ID)")
    flat = {Path(r["source"]).name: r for r in _worklist_csv(monkeypatch, tmp_path, url)}
    assert flat[broken.name]["suspicion"] == "" and flat[broken.name]["flags"] == flag
    code, out = invoke_cli(["worklist"], monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.OK and "broken" in out, out


def _table_cells(out: str) -> list[dict[str, str]]:
    """Each row's first line of a printed table, as {column: cell}."""
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    return [dict(zip(columns, (c.strip() for c in line.strip("│").split("│")), strict=True))
            for line in out.splitlines() if line.startswith("│ ") and line[2].isdigit()]


def test_an_empty_models_or_flags_cell_of_the_worklist_table_is_a_dash(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A failed image read alone has no model behind it (JSON []): the table printed an
    # empty models cell where every other empty cell is "-".
    url = f"sqlite:///{tmp_path / 'mammo.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        _batch_and_two_models(session)
        _exam(session, 1, {"L": LOW, "R": LOW})
        session.add(Image(identity="sha256:b", batch_id=1, study_id=None, source="/in/b.png",
                          format="png", state="failed", error_code="truncated",
                          error_message="b.png is cut short."))
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
    engine.dispose()
    rows = _worklist(monkeypatch, tmp_path, url)
    assert [r["models"] for r in rows] == [["m:1"], []]
    code, out = invoke_cli(["worklist"], monkeypatch, tmp_path, database_url=url,
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    exam, failed = _table_cells(out)
    assert (exam["study_uid"], exam["models"]) == ("1.2.9.1", "m:1")
    assert failed["source"] == "/in/b.png" and failed["models"] == "-"
    assert "" not in exam.values() and "" not in failed.values()
    # The CSV cell stays empty, as before; a row without flags is "-" in the table too.
    assert [r["models"] for r in _worklist_csv(monkeypatch, tmp_path, url)] == ["m:1", ""]
    unflagged = flat_worklist_row({**rows[0], "flags": []})
    assert unflagged["flags"] is None and flat_worklist_row(rows[1])["models"] is None


def test_a_failed_image_of_no_exam_takes_the_place_of_an_exam_whose_every_view_failed(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        _batch_and_two_models(session)
        _exam(session, 1, {"L": LOW, "R": LOW})
        session.add(Study(id=2, study_uid="1.2.9.2"))  # every view failed
        session.flush()
        session.add(Image(identity="sop:x", batch_id=1, study_id=2, source="/in/x.dcm",
                          format="dicom", laterality="L", view="CC", state="failed",
                          error_code="unreadable", error_message="x cannot be read"))
        alone = [_alone_image(session, "nine.png", NINE)]
        for name in ("b.png", "a.png"):
            image = Image(identity=f"sha256:{name}", batch_id=1, study_id=None,
                          source=f"/in/{name}", format="png", state="failed",
                          error_code="truncated", error_message=f"{name} is cut short.")
            session.add(image)
            session.flush()
            alone.append(image.id)
        refresh_exam_results(session, [1, 2], timeout_s=0)
        session.commit()
        assert session.scalar(select(ExamResult.suspicion).where(
            ExamResult.study_id == 2)) is None
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        limited = worklist_rows(session, WorklistFilter(limit=3), report_dir=tmp_path)
        total = count_worklist(session, WorklistFilter())
        summary = collect_batch_summary(session, 1, report_dir=tmp_path, worklist_limit=4)
    order = [r["study_uid"] or r["image_id"] for r in rows]
    # Scores first (the image read alone at 9, the exam), then the unscored: the exam
    # whose every view failed, then the failed images alone in image order.
    assert order == [alone[0], "1.2.9.1", "1.2.9.2", alone[1], alone[2]]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and total == 5
    assert [r["study_uid"] or r["image_id"] for r in limited] == order[:3]
    assert rows[3]["flags"] == ["failed, not scored: truncated: b.png is cut short; this "
                                "image belongs to no exam (no study ID)"]
    assert (summary.exams, summary.read_alone) == (2, 3)
    assert worklist_heading(summary) == ("Read first: exams and images read alone (no exam) "
                                         "by suspicion (the first 4 of 5)")
    html = render_summary_html(summary)
    assert f"image {alone[1]}, not scored (no exam): /in/b.png" in html
