"""How a file was read (inverted, EXIF-rotated, its value range taken from the pixels, a
modality taken on trust...) is kept with its prediction and shown where its score is: in
`mammo results` (JSON object, CSV cell) and in the exam report's data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, head_revisions, make_session_factory
from shared.db.engine import upgrade as upgrade_db
from shared.db.schema import Prediction
from shared.enums import Priority
from shared.reports.exam_data import load_exam_report
from shared.synthetic import make_exam_set, synth_mammogram
from tests.helpers.cli import invoke_cli
from tests.helpers.old_schema import migrated_to
from worker.decoding import NOTE_LIMIT, NOTES_PER_IMAGE, input_notes
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray - For Presentation
# The heads before 0009 (predictions.input_notes), as the previous release left them.
PREVIOUS_HEADS = ("0004", "0006", "0007", "0008")


def test_routine_notes_are_left_out_and_the_rest_kept_on_one_bounded_line() -> None:
    notes = input_notes({
        "transfer_syntax": "Explicit VR Little Endian", "decoder": "pylibjpeg",
        "voi": "window 1 of 1: centre 2048, width 4096, LINEAR",
        "orientation": "EXIF Orientation 6 applied: rotated 90 degrees clockwise",
        "modality": "(0008,0060) Modality is '\x1b[2J\nDX" + "x" * 500,
    })

    assert list(notes) == ["orientation", "modality"]
    assert notes["orientation"] == "EXIF Orientation 6 applied: rotated 90 degrees clockwise"
    assert len(notes["modality"]) == NOTE_LIMIT and notes["modality"].endswith("...")
    assert notes["modality"].startswith("(0008,0060) Modality is '\\x1b[2J\\x0aDX")


def test_notes_that_question_the_score_come_first_and_are_never_cut() -> None:
    # More reader notes than a prediction keeps, then the ones a reader must not miss.
    many = {f"reading_{n}": f"lenient reading {n}" for n in range(NOTES_PER_IMAGE + 3)}
    notes = input_notes({**many, "implant": "BreastImplantPresent is YES",
                         "laterality": "header says L, but the breast lies as in an R image",
                         "view_conflict": "View Position says CC, but the code says MLO"})

    assert len(notes) == NOTES_PER_IMAGE
    assert list(notes)[:4] == ["implant", "laterality", "view_conflict", "reading_0"]


def _turned_jpeg(path: Path) -> Path:
    """A mammogram stored lying on its side, EXIF Orientation 6 saying how to show it."""
    pixels = synth_mammogram(np.random.default_rng(3), size=(416, 512), bits=8)
    exif = PILImage.Exif()
    exif[274] = 6
    PILImage.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG", quality=95,
                                                     exif=exif.tobytes())
    return path


def _taken_on_trust(path: Path) -> Path:
    """A DX For Presentation image of the breast: scored on trust, with a note."""
    ds = pydicom.dcmread(path)
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    ds.save_as(path)
    return path


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def test_notes_of_a_rotated_jpeg_and_a_dx_image_reach_results_and_the_exam_report(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    exam = make_exam_set(tmp_path / "in", n_exams=1, seed=12)
    dx = _taken_on_trust(exam[0])
    turned = _turned_jpeg(tmp_path / "in" / "turned.jpg")
    batch = create_batch(sessions, name="notes", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, [*exam, turned]).new_ids
    runtime = WorkerRuntime(settings)

    done = [process_chunk(ids[:4], token="notes-1", runtime=runtime).done,
            process_chunk(ids[4:], token="notes-2", runtime=runtime).done]

    assert done == [4, 1]
    code, out = invoke_cli(["results", "--batch", str(batch), "--format", "json"],
                           monkeypatch, tmp_path, database_url=settings.database_url)
    assert code == ExitCode.OK, out
    rows = {Path(r["source"]).name: r for r in json.loads(out)}
    assert rows[turned.name]["input_notes"] == {
        "orientation": "EXIF Orientation 6 applied: rotated 90 degrees clockwise"}
    assert list(rows[dx.name]["input_notes"]) == ["modality"]
    assert "classified as a mammogram on trust" in rows[dx.name]["input_notes"]["modality"]
    # The other views were read plainly: their transfer syntax and VOI are no note.
    assert [rows[p.name]["input_notes"] for p in exam[1:]] == [{}, {}, {}]

    code, out = invoke_cli(["results", "--batch", str(batch), "--format", "csv"],
                           monkeypatch, tmp_path, database_url=settings.database_url)
    assert code == ExitCode.OK, out
    cells = {Path(r["source"]).name: r["input_notes"] for r in csv.DictReader(io.StringIO(out))}
    assert cells[turned.name] == "EXIF Orientation 6 applied: rotated 90 degrees clockwise"
    assert cells[exam[1].name] == ""

    with sessions() as session:
        report = load_exam_report(session, pydicom.dcmread(dx).StudyInstanceUID)
    [flag] = report.input_note_flags
    assert flag.startswith(f"L-CC (image {rows[dx.name]['image_id']}) read with notes: "
                           "(0008,0060) Modality is 'DX', not MG")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_database_with_predictions_adds_input_notes_empty(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    migrated_to(url, PREVIOUS_HEADS,
                "INSERT INTO batches (id, name, priority, mode, submitted, duplicates) "
                "VALUES (1, 'night', 'routine', 'dicom', 1, 0)",
                "INSERT INTO model_versions (id, name, version, sha256, preprocessing_version, "
                "classes, input_size, path) VALUES (1, 'default', '1.0.0', 'ab12', 'pp1', "
                "'[\"normal\", \"benign\", \"malignant\"]', '[224, 224]', '/m')",
                "INSERT INTO images (id, identity, batch_id, source, format, state, attempts) "
                "VALUES (1, 'sha256:01', 1, '/in/a.png', 'png', 'done', 1)",
                "INSERT INTO predictions (id, image_id, model_version_id, preprocessing_version, "
                "label, p_normal, p_benign, p_malignant, suspicion, decode_ms, preprocess_ms, "
                "infer_ms, forward_pass_id, forward_pass_size) VALUES (1, 1, 1, 'pp1', "
                "'benign', 0.2, 0.7, 0.1, 5, 1.0, 2.0, 3.0, 'fp-1', 1)")
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]

    before, after = upgrade_db(engine)

    assert before == "+".join(PREVIOUS_HEADS)
    # 0009 (input_notes) applied: below 0015 (predictions.reader_version) and 0017.
    assert after is not None and "0017" in after.split("+")
    assert set(after.split("+")) == head_revisions(engine)
    with engine.connect() as conn:
        assert "input_notes" in {c["name"] for c in inspect(conn).get_columns("predictions")}
        assert conn.execute(text("SELECT label, input_notes FROM predictions")).one() \
            == ("benign", None)
    with make_session_factory(engine)() as session:  # the column takes the worker's dict
        session.get_one(Prediction, 1).input_notes = {"range": "value range taken ..."}
        session.commit()
        assert session.execute(select(Prediction.input_notes)).scalar_one() \
            == {"range": "value range taken ..."}
    engine.dispose()
