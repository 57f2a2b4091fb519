"""Registration: header metadata, pseudonyms, manifests and duplicates land in the database."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import Ingestion, create_batch, ingestion_for, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, DuplicateSubmission, Image, Study
from shared.enums import ErrorCode, Laterality, Priority, View
from shared.queries import ResultFilter, list_results
from shared.synthetic import make_exam_set, synth_mammogram, write_dicom, write_png
from shared.timeutil import as_utc
from tests.helpers.cli import run_cli
from tests.helpers.dicom_edit import rewrite_dicom

PATIENT = "PAT-REAL-LOOKING-991"
KEY = "0123456789abcdef-test-key"


@pytest.fixture
def sessions(sqlite_url: str) -> sessionmaker[Session]:
    engine = create_db_engine(_settings(sqlite_url))
    ensure_schema(engine)
    return make_session_factory(engine)


def _settings(url: str, key: str | None = None) -> Settings:
    return Settings(database_url=url, broker_url=None, _env_file=None,  # type: ignore[call-arg]
                    patient_id_key=SecretStr(key) if key else None)


def _dicom(folder: Path, name: str, sop: str, patient_id: str | None = PATIENT,
           study_uid: str = "1.2.826.0.1.3680043.8.498.70") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(1), size=(96, 80))
    return write_dicom(folder / name, pixels, study_uid=study_uid,
                       sop_uid=sop, laterality=Laterality.RIGHT, view=View.MLO,
                       patient_id=patient_id)


def _register(sessions: sessionmaker[Session], files: list[Path],
              ingestion: Ingestion | None = None) -> int:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    register_files(sessions, batch, files, ingestion=ingestion)
    return batch


def test_dicom_metadata_and_pseudonym_are_stored(tmp_path: Path, sqlite_url: str,
                                                 sessions: sessionmaker[Session]) -> None:
    path = _dicom(tmp_path, "a.dcm", "1.2.826.0.1.3680043.8.498.71")
    _register(sessions, [path], ingestion_for(_settings(sqlite_url, KEY)))
    with sessions() as session:
        image = session.execute(select(Image)).scalar_one()
        study = session.execute(select(Study)).scalar_one()
    assert (image.state, image.laterality, image.view) == ("queued", "R", "MLO")
    assert image.voi is not None and image.voi.startswith("window 1 of 1")
    assert image.burned_in_annotation is False
    assert study.patient_pseudonym is not None and study.patient_pseudonym.startswith("p-")
    assert PATIENT not in repr(vars(image)) + repr(vars(study))


def test_no_key_fails_the_file_with_its_reason_then_the_key_lets_it_in(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    sessions = each_backend_sessions
    path = _dicom(tmp_path, "a.dcm", "1.2.826.0.1.3680043.8.498.72")
    _register(sessions, [path], ingestion_for(_settings(sqlite_url)))
    with sessions() as session:
        failed = session.execute(select(Image)).scalar_one()
    assert failed.state == "failed" and failed.error_code == ErrorCode.NO_PSEUDONYM_KEY.value
    assert failed.error_message and "MAMMO_PATIENT_ID_KEY" in failed.error_message
    assert PATIENT not in failed.error_message
    # Configured now: the refused image itself is queued again, in the new batch and under
    # its DICOM UID, so the refusal no longer counts among the failures.
    batch = _register(sessions, [path], ingestion_for(_settings(sqlite_url, KEY)))
    with sessions() as session:
        image = session.execute(select(Image)).scalar_one()
        study = session.execute(select(Study)).scalar_one()
    assert (image.id, image.state, image.batch_id) == (failed.id, "queued", batch)
    assert (image.error_code, image.error_message, image.finished_at) == (None, None, None)
    assert image.identity.startswith("sop:") and image.study_id == study.id
    assert study.patient_pseudonym and (image.laterality, image.view) == ("R", "MLO")


def test_a_refused_file_whose_image_came_in_under_another_path_becomes_its_copy(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    sessions = each_backend_sessions
    first = _dicom(tmp_path / "pk", "A.dcm", "1.2.826.0.1.3680043.8.498.77")
    second = tmp_path / "other" / "B.dcm"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    without, keyed = ingestion_for(_settings(sqlite_url)), ingestion_for(_settings(sqlite_url, KEY))
    refused_in = _register(sessions, [first], without)
    _register(sessions, [second], without)  # a copy of the refusal
    _register(sessions, [second], keyed)  # the image comes in under B's path
    _register(sessions, [first], keyed)  # the README's remedy: A is resubmitted
    with sessions() as session:
        images = session.execute(select(Image.source, Image.state)).all()
        copies = session.execute(select(DuplicateSubmission.batch_id, DuplicateSubmission.source,
                                        DuplicateSubmission.image_id)).all()
        batch = session.get(Batch, refused_in)
    [(source, state)] = images  # the refusal is retired: one image, no failure left
    assert (source, state) == (str(second), "queued")
    with sessions() as session:
        image_id = session.execute(select(Image.id)).scalar_one()
    assert {c.image_id for c in copies} == {image_id}
    assert (refused_in, str(first), image_id) in copies and len(copies) == 3
    assert batch is not None and batch.duplicates == 1


def test_a_refused_path_holding_another_file_now_is_a_new_image(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    path = _dicom(tmp_path, "a.dcm", "1.2.826.0.1.3680043.8.498.75")
    _register(sessions, [path], ingestion_for(_settings(sqlite_url)))
    _dicom(tmp_path, "a.dcm", "1.2.826.0.1.3680043.8.498.76")  # the router reused the name
    _register(sessions, [path], ingestion_for(_settings(sqlite_url, KEY)))
    with sessions() as session:
        rows = sorted(session.execute(select(Image.state, Image.error_code)).all())
    assert rows == [("failed", ErrorCode.NO_PSEUDONYM_KEY.value), ("queued", None)]


def test_synthetic_files_need_no_key(tmp_path: Path, sqlite_url: str,
                                     sessions: sessionmaker[Session]) -> None:
    path = _dicom(tmp_path, "s.dcm", "1.2.826.0.1.3680043.8.498.73", patient_id=None)
    _register(sessions, [path], ingestion_for(_settings(sqlite_url)))
    with sessions() as session:
        assert session.execute(select(Image.state)).scalar_one() == "queued"


def test_manifest_metadata_for_png(tmp_path: Path, sqlite_url: str,
                                   sessions: sessionmaker[Session]) -> None:
    png = write_png(tmp_path / "scan.png", synth_mammogram(np.random.default_rng(2)) << 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,laterality,view,study_id,label,pixel_spacing_mm\n"
                        "scan.png,P1,L,CC,EXAM-7,benign,0.1\n")
    _register(sessions, [png], ingestion_for(_settings(sqlite_url, KEY), manifest))
    with sessions() as session:
        image = session.execute(select(Image)).scalar_one()
        study = session.execute(select(Study)).scalar_one()
    assert (image.laterality, image.view, image.reference_label) == ("L", "CC", "benign")
    assert (image.spacing_row_mm, image.spacing_column_mm) == (0.1, 0.1)
    assert study.patient_pseudonym
    assert study.study_uid == f"manifest:{study.patient_pseudonym}:EXAM-7"
    assert image.study_id == study.id


def test_a_manifest_patient_with_a_study_date_reaches_the_exam(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """A patient_id with only a date was dropped: no study, no pseudonym. Grouped now as a
    DICOM without a StudyInstanceUID is, by patient and date."""
    rng = np.random.default_rng(3)
    for name in ("l.png", "r.png", "later.png"):
        write_png(tmp_path / name, synth_mammogram(rng) << 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,laterality,study_date\n"
                        "l.png,P1,L,2024-03-01\nr.png,P1,R,20240301\nlater.png,P1,L,20250301\n")
    _register(sessions, sorted(tmp_path.glob("*.png")),
              ingestion_for(_settings(sqlite_url, KEY), manifest))
    with sessions() as session:
        studies = session.execute(select(Study).order_by(Study.study_date)).scalars().all()
        by_name = {Path(source).name: study for source, study in session.execute(
            select(Image.source, Image.study_id))}
    assert [s.study_date for s in studies] == ["20240301", "20250301"]
    assert studies[0].patient_pseudonym == studies[1].patient_pseudonym is not None
    assert by_name["l.png"] == by_name["r.png"] == studies[0].id != by_name["later.png"]


def test_manifest_patients_sharing_a_study_id_are_each_their_own_exam(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """Sites and nights reuse exam numbers: three patients' EXAM-0001 were one exam under
    the first patient, each breast read against another woman's."""
    rng = np.random.default_rng(4)
    for name in ("a_l.png", "a_r.png", "b_r.png", "c_l.png"):
        write_png(tmp_path / name, synth_mammogram(rng) << 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,laterality,view,study_id\n"
                        "a_l.png,PAT-A,L,MLO,EXAM-0001\na_r.png,PAT-A,R,MLO,EXAM-0001\n"
                        "b_r.png,PAT-B,R,MLO,EXAM-0001\nc_l.png,PAT-C,L,MLO,EXAM-0001\n")
    _register(sessions, sorted(tmp_path.glob("*.png")),
              ingestion_for(_settings(sqlite_url, KEY), manifest))
    with sessions() as session:
        studies = session.execute(select(Study)).scalars().all()
        study_of = {Path(source).name: study for source, study in session.execute(
            select(Image.source, Image.study_id))}
    assert len(studies) == 3 and len({s.patient_pseudonym for s in studies}) == 3
    assert all(s.study_uid == f"manifest:{s.patient_pseudonym}:EXAM-0001" for s in studies)
    assert study_of["a_l.png"] == study_of["a_r.png"]
    assert len({study_of["a_l.png"], study_of["b_r.png"], study_of["c_l.png"]}) == 3


def test_a_late_image_joins_its_manifest_exam_registered_before_keys_held_the_patient(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """An exam registered as manifest:EXAM-7 before an upgrade: its late view started a
    second exam, manifest:PSEUDONYM:EXAM-7, beside it; another patient's EXAM-7 does not
    join it."""
    rng = np.random.default_rng(5)
    for name in ("first.png", "late.png", "other.png"):
        write_png(tmp_path / name, synth_mammogram(rng) << 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,laterality,view,study_id\n"
                        "first.png,PAT-A,L,MLO,EXAM-7\nlate.png,PAT-A,R,MLO,EXAM-7\n"
                        "other.png,PAT-B,R,MLO,EXAM-7\n")
    ingestion = ingestion_for(_settings(sqlite_url, KEY), manifest)
    _register(sessions, [tmp_path / "first.png"], ingestion)
    with sessions() as session:  # as the release before this one keyed it
        session.execute(update(Study).values(study_uid="manifest:EXAM-7"))
        session.commit()
    _register(sessions, [tmp_path / "late.png", tmp_path / "other.png"], ingestion)
    with sessions() as session:
        study_of = {Path(source).name: study for source, study in session.execute(
            select(Image.source, Image.study_id))}
        uids = {s.id: s.study_uid for s in session.execute(select(Study)).scalars()}
    assert study_of["late.png"] == study_of["first.png"]
    assert uids[study_of["first.png"]] == "manifest:EXAM-7"
    assert study_of["other.png"] != study_of["first.png"]
    assert uids[study_of["other.png"]].endswith(":EXAM-7")


@pytest.mark.parametrize("one_batch", [True, False])
def test_a_study_uid_of_another_patient_fails_as_a_conflict(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session],
        one_batch: bool) -> None:
    """Left views of one patient and right views of another under one StudyInstanceUID
    made one 'complete' exam under the first patient, read against each other."""
    sessions = each_backend_sessions
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    study_uid = "1.2.826.0.1.3680043.8.498.94"
    first = _dicom(tmp_path / "a", "first.dcm", "1.2.826.0.1.3680043.8.498.95",
                   study_uid=study_uid)
    other = _dicom(tmp_path / "b", "other.dcm", "1.2.826.0.1.3680043.8.498.96",
                   patient_id="PAT-ANOTHER-776", study_uid=study_uid)
    same = _dicom(tmp_path / "c", "same.dcm", "1.2.826.0.1.3680043.8.498.97",
                  study_uid=study_uid)
    if one_batch:
        _register(sessions, [first, other, same], ingestion)
    else:
        _register(sessions, [first], ingestion)
        _register(sessions, [other, same], ingestion)
    with sessions() as session:
        study = session.execute(select(Study)).scalar_one()
        images = {Path(i.source).name: i for i in session.execute(select(Image)).scalars()}
    assert images["first.dcm"].study_id == images["same.dcm"].study_id == study.id
    clash = images["other.dcm"]
    assert (clash.state, clash.error_code, clash.study_id) == ("failed", "uid_conflict", None)
    assert clash.error_message and clash.error_message.startswith(
        f"Its StudyInstanceUID {study_uid} already names an exam of patient "
        f"{study.patient_pseudonym}, and this file's patient is p-")
    assert PATIENT not in clash.error_message and "PAT-ANOTHER" not in clash.error_message
    # Sent again unchanged, it is a copy of its refusal, not an image of that exam.
    _register(sessions, [other], ingestion)
    with sessions() as session:
        [copy] = session.execute(select(DuplicateSubmission)).scalars().all()
        refused = session.execute(select(Image.id).where(
            Image.error_code == "uid_conflict")).scalars().all()
    assert copy.image_id == clash.id and refused == [clash.id]


def test_manifest_rows_matching_no_file_are_warned_about(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", synth_mammogram(np.random.default_rng(5)) << 4)
    (folder / "broken.png").write_bytes(b"not a PNG")  # submitted: its row was used
    manifest = folder / "m.csv"
    manifest.write_text("path,view\na.png,CC\nbroken.png,MLO\n../../etc/passwd,CC\n"
                        "/etc/hostname,MLO\n")
    with caplog.at_level("WARNING", logger="producer.registration"):
        _register(sessions, [folder / "a.png", folder / "broken.png"],
                  ingestion_for(_settings(sqlite_url), manifest))
    [warning] = [r.getMessage() for r in caplog.records if "manifest" in r.getMessage()]
    assert warning.startswith(f"2 row(s) of the manifest {manifest} matched no submitted file")
    assert "line 4 '../../etc/passwd', line 5 '/etc/hostname')" in warning


def test_duplicates_are_recorded_and_listed_with_the_original(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    first = _dicom(tmp_path / "one", "a.dcm", "1.2.826.0.1.3680043.8.498.74")
    batch1 = _register(sessions, [first], ingestion)
    copy = tmp_path / "two" / "renamed.dcm"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    batch2 = _register(sessions, [copy, first], ingestion)
    with sessions() as session:
        original = session.execute(select(Image)).scalar_one()  # still exactly one image
        duplicates = session.execute(select(DuplicateSubmission)).scalars().all()
        rows = list_results(session, ResultFilter(batch_id=batch2, include_duplicates=True))
        plain = list_results(session, ResultFilter(batch_id=batch2))
        first_rows = list_results(session, ResultFilter(batch_id=batch1,
                                                        include_duplicates=True))
    assert original.batch_id == batch1
    assert [(d.batch_id, d.image_id) for d in duplicates] == [(batch2, original.id)] * 2
    assert plain == [] and len(first_rows) == 1
    assert {r["source"] for r in rows} == {str(copy), str(first)}
    assert first_rows[0]["duplicate_of"] is None
    for row in rows:  # the original's state and result, which obey the results contract
        assert (row["state"], row["error_code"], row["error_message"]) == (
            original.state, None, None)
        assert row["image_id"] == row["duplicate_of"] == original.id
        assert row["batch_id"] == batch2


def test_copies_are_waited_on_once_and_not_at_all_when_new_in_the_batch(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    first = _dicom(tmp_path / "one", "a.dcm", "1.2.826.0.1.3680043.8.498.75")
    copies = [tmp_path / "one" / f"copy-{i}.dcm" for i in range(2)]
    for copy in copies:
        shutil.copy(first, copy)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    same_batch = register_files(sessions, batch, [first, *copies], ingestion=ingestion)
    assert len(same_batch.new_ids) == 1 and len(same_batch.duplicates) == 2
    # The image is new here: whoever waits for the batch waits for it once, as new.
    assert same_batch.unfinished_duplicate_ids == []
    # Sent again (twice) while still queued: one image to wait on, once.
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    later = register_files(sessions, batch, copies, ingestion=ingestion)
    assert later.new_ids == [] and later.unfinished_duplicate_ids == same_batch.new_ids


def test_a_file_name_that_is_not_utf8_fails_clearly_and_can_be_renamed(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    source = _dicom(tmp_path, "a.dcm", "1.2.826.0.1.3680043.8.498.76")
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.dcm")  # as a Latin-1 system names it
    source.rename(latin1)
    _register(sessions, [latin1], ingestion)
    _register(sessions, [latin1], ingestion)  # the same badly named file again: no new row
    with sessions() as session:
        [image] = session.execute(select(Image)).scalars().all()
    assert (image.state, image.error_code) == ("failed", ErrorCode.BAD_FILE_NAME.value)
    assert image.source == f"{tmp_path}/caf\\xe9.dcm"
    assert "caf\\xe9.dcm" in image.error_message and "Rename" in image.error_message
    renamed = latin1.rename(tmp_path / "cafe.dcm")
    _register(sessions, [renamed], ingestion)
    with sessions() as session:
        states = sorted(session.execute(select(Image.state)).scalars().all())
    assert states == ["failed", "queued"]  # renamed, it is a new image, not a duplicate


def test_a_folder_name_that_is_not_utf8_is_named_not_the_file(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    path = _dicom(folder, "good_name.dcm", "1.2.826.0.1.3680043.8.498.77")
    _register(sessions, [path], ingestion_for(_settings(sqlite_url, KEY)))
    with sessions() as session:
        [image] = session.execute(select(Image)).scalars().all()
    assert image.error_code == ErrorCode.BAD_FILE_NAME.value
    assert "The folder name 'caf\\xe9' is not valid UTF-8" in image.error_message
    assert "good_name" not in image.error_message


def test_run_with_manifest_then_rerun_lists_duplicates_with_their_result(
        tmp_path: Path, settings: Settings) -> None:
    """End to end through the embedded run: metadata from the manifest reaches the results,
    and a second run of the same files shows each as a duplicate, with one prediction."""
    from producer.embedded_run import run_embedded
    from shared.db.schema import Prediction
    from shared.reports.batch_data import collect_batch_summary

    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name, laterality in (("a.png", Laterality.LEFT), ("b.png", Laterality.RIGHT)):
        write_png(folder / name, synth_mammogram(rng, laterality=laterality) << 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,laterality,view\npngs/a.png,L,CC\npngs/b.png,R,MLO\n")
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)

    first = run_embedded(settings, sessions, [folder], manifest=manifest).submission
    again = run_embedded(settings, sessions, [folder], manifest=manifest).submission
    with sessions() as session:
        done = list_results(session, ResultFilter(batch_id=first.batch_id))
        repeated = list_results(session, ResultFilter(batch_id=again.batch_id,
                                                      include_duplicates=True))
        predictions = session.execute(select(Prediction)).scalars().all()
        summary = collect_batch_summary(session, again.batch_id, report_dir=tmp_path)
    # The re-run's report lists its copies with their results, and counts no image twice.
    assert sorted(r["source"] for r in summary.results) == sorted(r["source"] for r in done)
    assert sum(summary.by_state.values()) == 0
    assert {(Path(r["source"]).name, r["laterality"], r["view"], r["state"]) for r in done} == {
        ("a.png", "L", "CC", "done"), ("b.png", "R", "MLO", "done")}
    assert len(predictions) == 2
    assert sorted(r["state"] for r in repeated) == ["done", "done"]
    by_id = {r["image_id"]: r for r in done}
    for row in repeated:
        original = by_id[row["duplicate_of"]]
        assert row["label"] == original["label"] is not None
        assert {k: v for k, v in row.items() if k not in ("batch_id", "duplicate_of")} == {
            k: v for k, v in original.items() if k not in ("batch_id", "duplicate_of")}


@pytest.mark.parametrize("same_batch", [True, False])
def test_a_reused_sop_uid_on_a_different_image_fails_as_a_conflict(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session],
        same_batch: bool) -> None:
    # DICOM forbids two images under one SOP Instance UID, yet misconfigured senders do it;
    # taking the second for a copy of the first would show it the first image's result.
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    sop = "1.2.826.0.1.3680043.8.498.90"
    first = _dicom(tmp_path / "a", "first.dcm", sop)
    other = write_dicom(tmp_path / "other.dcm",
                        synth_mammogram(np.random.default_rng(5), size=(120, 90)),
                        study_uid="1.2.826.0.1.3680043.8.498.91", sop_uid=sop,
                        laterality=Laterality.LEFT, view=View.CC, patient_id=PATIENT)
    if same_batch:
        batch = _register(sessions, [first, other], ingestion)
    else:
        _register(sessions, [first], ingestion)
        batch = _register(sessions, [other], ingestion)
    resent = tmp_path / "b" / "resent.dcm"  # the genuine image again, under another name
    resent.parent.mkdir()
    shutil.copy(first, resent)
    again = _register(sessions, [other, resent], ingestion)
    with sessions() as session:
        images = session.execute(select(Image).order_by(Image.id)).scalars().all()
        duplicates = session.execute(
            select(DuplicateSubmission).where(DuplicateSubmission.batch_id == again)
        ).scalars().all()
    assert len(images) == 2
    original, clash = images
    assert (original.state, original.source) == ("queued", str(first))
    assert (clash.state, clash.error_code, clash.batch_id) == ("failed", "uid_conflict", batch)
    assert clash.source == str(other)
    assert f"{sop} already names image {original.id} (80 x 96 px, R MLO)" in clash.error_message
    assert "(90 x 120 px, L CC)" in clash.error_message
    # Sent again, each file repeats its own row: the clash its failure, the copy the image.
    assert sorted((d.source, d.image_id) for d in duplicates) == sorted(
        [(str(other), clash.id), (str(resent), original.id)])


@pytest.mark.parametrize("other", ["exam", "patient"])
def test_a_reused_sop_uid_in_another_exam_or_of_another_patient_is_a_conflict(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session],
        other: str) -> None:
    # The same view, alike in size, of a new exam: taken for a copy, the new exam would show
    # the earlier exam's result and be listed as missing that view.
    sessions = each_backend_sessions
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    sop = "1.2.826.0.1.3680043.8.498.92"
    first = _dicom(tmp_path / "a", "first.dcm", sop)
    changed = ({"study_uid": "1.2.826.0.1.3680043.8.498.93"} if other == "exam"
               else {"patient_id": "PAT-ANOTHER-775"})
    reused = _dicom(tmp_path / "b", "reused.dcm", sop, **changed)  # type: ignore[arg-type]
    _register(sessions, [first], ingestion)
    batch = _register(sessions, [reused], ingestion)
    with sessions() as session:
        original, clash = session.execute(select(Image).order_by(Image.id)).scalars().all()
        study = session.get(Study, original.study_id)
        copies = session.execute(select(DuplicateSubmission)).scalars().all()
    assert copies == [] and clash.batch_id == batch and clash.source == str(reused)
    assert (clash.state, clash.error_code) == ("failed", "uid_conflict")
    assert clash.error_message and study
    theirs = study.study_uid if other == "exam" else study.patient_pseudonym
    assert f"they differ in {other} (image {original.id}'s {theirs}; this file's " \
        in clash.error_message
    assert PATIENT not in clash.error_message and "PAT-ANOTHER" not in clash.error_message


@pytest.mark.parametrize("code, retried", [(ErrorCode.TRUNCATED, True),
                                           (ErrorCode.POISON, True),
                                           (ErrorCode.NOT_MAMMOGRAPHY, False)])
def test_a_failed_image_submitted_again_is_retried_when_a_new_attempt_can_help(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session], code: ErrorCode,
        retried: bool) -> None:
    # A DICOM whose transfer stalled failed as truncated under its SOPInstanceUID; the
    # complete file has the same identity and must not be a mere copy of that failure.
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    first = _dicom(tmp_path / "a", "scan.dcm", "1.2.826.0.1.3680043.8.498.95")
    batch1 = _register(sessions, [first], ingestion)
    with sessions() as session:
        image_id = session.execute(select(Image.id)).scalar_one()
        lifecycle.mark_failed(session, image_id, code, "it failed")
        session.commit()
    again = tmp_path / "b" / "scan.dcm"
    again.parent.mkdir()
    shutil.copy(first, again)
    batch2 = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    reg = register_files(sessions, batch2, [again, again], ingestion=ingestion)
    with sessions() as session:
        image = session.execute(select(Image)).scalar_one()  # still one image
    if retried:
        assert reg.new_ids == [image_id] and reg.retried == {image_id: code.value}
        assert (image.state, image.error_code, image.attempts) == ("queued", None, 0)
        assert (image.batch_id, image.source) == (batch2, str(again))
        assert [d[1] for d in reg.duplicates] == [image_id]  # the path listed twice
    else:
        assert reg.new_ids == [] and reg.retried == {}
        assert (image.state, image.error_code, image.batch_id) == ("failed", code.value, batch1)
        assert [(d[1], d[2]) for d in reg.duplicates] == [(image_id, "failed")] * 2


def test_a_truncated_file_submitted_again_unchanged_stays_a_copy_of_its_failure(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    # Re-running a folder must not re-decode its broken files each time; the transfer
    # completing (the file written to after the failure) is what makes a retry worthwhile.
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    path = _dicom(tmp_path, "scan.dcm", "1.2.826.0.1.3680043.8.498.96")
    _register(sessions, [path], ingestion)
    with sessions() as session:
        image_id = session.execute(select(Image.id)).scalar_one()
        lifecycle.mark_failed(session, image_id, ErrorCode.TRUNCATED, "cut short")
        session.commit()
        failed_at = as_utc(session.execute(
            select(Image.finished_at).where(Image.id == image_id)).scalar_one())
    assert failed_at is not None
    os.utime(path, (1_000_000_000, 1_000_000_000))  # written long before it failed
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    unchanged = register_files(sessions, batch, [path], ingestion=ingestion)
    assert unchanged.new_ids == [] and unchanged.duplicates == [(str(path), image_id, "failed")]
    # The writer finished it a second after the failure. Set, not touched: a file time
    # the file system stamps may lag the clock by a few ms, before a failure ms earlier.
    completed = (failed_at + timedelta(seconds=1)).timestamp()
    os.utime(path, (completed, completed))
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    completed = register_files(sessions, batch, [path], ingestion=ingestion)
    assert completed.new_ids == [image_id] and completed.duplicates == []


def _without_study_uid(path: Path, **changes: object) -> Path:
    rewrite_dicom(path, StudyInstanceUID=None, **changes)
    return path


def test_an_exam_without_study_uid_is_grouped_by_accession_else_by_patient_and_date(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    # Some senders leave (0020,000D) out; an image without a study is scored but never
    # reaches the worklist or an exam report.
    sessions = each_backend_sessions
    ingestion = ingestion_for(_settings(sqlite_url, KEY))

    def views(folder: str, first: int, count: int, **changes: object) -> list[Path]:
        return [_without_study_uid(_dicom(tmp_path / folder, f"{n}.dcm",
                                          f"1.2.826.0.1.3680043.8.498.{n}"), **changes)
                for n in range(first, first + count)]

    by_accession = views("acc", 100, 2, AccessionNumber="ACC42")
    by_date = views("date", 200, 2, AccessionNumber=None)
    # A date without a patient would merge every patient of that day: no exam.
    nothing = views("none", 300, 1, AccessionNumber=None, PatientID=None)
    _register(sessions, [*by_accession, *by_date, *nothing], ingestion)
    # Later views of the same exams, in another batch, join the same studies.
    later = views("acc", 102, 1, AccessionNumber="ACC42") + views("date", 202, 1,
                                                                 AccessionNumber=None)
    _register(sessions, later, ingestion)
    with sessions() as session:
        study_of = dict(session.execute(select(Image.source, Image.study_id)).all())
        studies = {s.id: s for s in session.execute(select(Study)).scalars()}
    [exam_id] = {study_of[str(p)] for p in [*by_accession, later[0]]}
    [day_id] = {study_of[str(p)] for p in [*by_date, later[1]]}
    assert exam_id != day_id and study_of[str(nothing[0])] is None and len(studies) == 2
    exam, day = studies[exam_id], studies[day_id]
    assert exam.patient_pseudonym and day.patient_pseudonym and day.study_date
    assert exam.study_uid == f"accession:{exam.patient_pseudonym}:ACC42"
    assert day.study_uid == f"date:{day.patient_pseudonym}:{day.study_date}"
    assert PATIENT not in exam.study_uid + day.study_uid


def test_exams_without_study_uid_reach_the_worklist_with_their_report(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "night"
    files = make_exam_set(folder, n_exams=2, seed=5)
    for path in files[:4]:  # the first exam keeps its accession number
        _without_study_uid(path)
    for path in files[4:]:  # the second has only its patient and date
        _without_study_uid(path, AccessionNumber=None, PatientID="PAT-2")
    env = {"database_url": f"sqlite:///{tmp_path / 'm.db'}", "model": str(tiny_model_dir),
           "report_dir": str(tmp_path / "reports"), "patient_id_key": KEY}
    assert run_cli(["run", str(folder)], monkeypatch, tmp_path, **env).exit_code == 0
    listed = run_cli(["worklist", "--format", "json"], monkeypatch, tmp_path, **env)
    assert listed.exit_code == 0, listed.output
    exams = json.loads(listed.stdout)
    assert sorted(e["study_uid"].split(":")[0] for e in exams) == ["accession", "date"]
    assert all(e["status"] == "complete" and e["report_path"] for e in exams), exams


def test_a_source_is_stored_absolute_with_dot_dot_collapsed_and_symlinks_kept(
        tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    # `mammo run ../scans` from another folder stored "/.../run1/../scans/a.dcm".
    first = _dicom(tmp_path / "scans", "a.dcm", "1.2.826.0.1.3680043.8.498.110",
                   patient_id=None)
    (tmp_path / "run1").mkdir()
    # The drop folder knows files by the paths it sees: a symlinked folder stays a link.
    (tmp_path / "link").symlink_to(tmp_path / "scans")
    _dicom(tmp_path / "scans", "b.dcm", "1.2.826.0.1.3680043.8.498.111",
           patient_id=None)
    # Past a symlinked folder, ".." is its target's parent: collapsing it would name
    # another file (here one that exists, and one that does not).
    (tmp_path / "scans" / "deep").mkdir()
    (tmp_path / "deep").symlink_to(tmp_path / "scans" / "deep")
    beyond = _dicom(tmp_path / "scans", "c.dcm", "1.2.826.0.1.3680043.8.498.112",
                    patient_id=None)
    _dicom(tmp_path, "c.dcm", "1.2.826.0.1.3680043.8.498.113", patient_id=None)
    missing = _dicom(tmp_path / "scans", "d.dcm", "1.2.826.0.1.3680043.8.498.114",
                     patient_id=None)
    given = [tmp_path / "run1" / ".." / "scans" / "a.dcm", tmp_path / "link" / "b.dcm",
             tmp_path / "deep" / ".." / "c.dcm", tmp_path / "deep" / ".." / "d.dcm"]
    _register(sessions, given)
    with sessions() as session:
        stored = dict(session.execute(select(Image.sop_instance_uid, Image.source)).all())
    assert stored["1.2.826.0.1.3680043.8.498.110"] == str(first)
    assert stored["1.2.826.0.1.3680043.8.498.111"] == str(tmp_path / "link" / "b.dcm")
    assert os.path.samefile(stored["1.2.826.0.1.3680043.8.498.112"], beyond)
    assert os.path.samefile(stored["1.2.826.0.1.3680043.8.498.114"], missing)


def test_rows_stored_before_sources_were_normalised_still_name_their_files(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    given = tmp_path / "run1" / ".." / "scans" / "a.dcm"
    (tmp_path / "run1").mkdir()
    path = _dicom(tmp_path / "scans", "a.dcm", "1.2.826.0.1.3680043.8.498.120")
    refused_in = _register(sessions, [given], ingestion_for(_settings(sqlite_url)))
    with sessions() as session:  # as an earlier version stored it
        session.execute(update(Image).values(source=str(given)))
        session.commit()
    # The key set, the same command again: the refusal is adopted, not left beside a new image.
    keyed = ingestion_for(_settings(sqlite_url, KEY))
    _register(sessions, [given], keyed)
    with sessions() as session:
        image = session.execute(select(Image)).scalar_one()
        assert (image.state, image.source) == ("queued", str(path))
        assert image.batch_id != refused_in
        lifecycle.mark_failed(session, image.id, ErrorCode.TRUNCATED, "cut short")
        session.execute(update(Image).values(source=str(given)))
        session.commit()
    # An unchanged truncated file given again is a copy of its failure, not "another path".
    os.utime(path, (1_000_000_000, 1_000_000_000))
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    again = register_files(sessions, batch, [given], ingestion=keyed)
    assert again.new_ids == [] and again.duplicates == [(str(path), image.id, "failed")]


def test_header_values_longer_than_the_database_holds_are_fitted_not_a_failed_block(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    # PostgreSQL refuses a value longer than its column: one sender's 100-character UID or
    # dashed date aborted the registration of every file in the block.
    from shared.imaging.identity import file_has_identity

    sessions = each_backend_sessions
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    long_root = "1.2." + "3" * 100
    with warnings.catch_warnings():  # pydicom warns of what this sender does wrong
        warnings.simplefilter("ignore", UserWarning)
        files = [_dicom(tmp_path, f"{n}.dcm", f"{long_root}.{n}",
                        study_uid="1.2." + "4" * 100) for n in (1, 2)]
        rewrite_dicom(files[0], StudyDate="2024-01-31", AccessionNumber="A" * 80,
                      Manufacturer="M" * 100, SeriesInstanceUID="1.2." + "5" * 100)
        rewrite_dicom(files[1], StudyDate="31/01/2024")
    good = _dicom(tmp_path, "good.dcm", "1.2.826.0.1.3680043.8.498.7")
    _register(sessions, [*files, good], ingestion)

    with sessions() as session:
        images = {Path(i.source).name: i for i in session.execute(select(Image)).scalars()}
        studies = list(session.execute(select(Study)).scalars())
    assert {i.state for i in images.values()} == {"queued"}
    first, second = images["1.dcm"], images["2.dcm"]
    # Two UIDs that share their first 100 characters stay two images.
    assert first.identity != second.identity
    assert all(len(i.sop_instance_uid or "") <= 64 for i in images.values())
    assert first.manufacturer == "M" * 64 and len(first.series_instance_uid or "") == 64
    assert len(studies) == 2  # the long UID's exam, and the good file's
    long_study = next(s for s in studies if s.study_uid.startswith("1.2.444"))
    assert len(long_study.study_uid) == 64 and first.study_id == second.study_id
    assert long_study.study_date in {"20240131", None}  # 2nd file's date is unreadable
    # The worker's "is this still the registered file?" check reads the same identity.
    assert file_has_identity(files[0], first.identity)
    assert file_has_identity(files[1], second.identity)
    # ...and an identity stored whole before (SQLite never enforced the column's length).
    assert file_has_identity(files[0], f"sop:{long_root}.1")
    assert not file_has_identity(files[0], f"sop:{long_root}.2")


def test_long_accession_numbers_that_share_their_start_stay_two_exams(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    # An exam without a StudyInstanceUID is keyed by its accession number: cut to the
    # column, two numbers differing after 64 characters merged two patients' exams.
    sessions = each_backend_sessions
    ingestion = ingestion_for(_settings(sqlite_url, KEY))
    with warnings.catch_warnings():  # pydicom warns of what this sender does wrong
        warnings.simplefilter("ignore", UserWarning)
        files = [_without_study_uid(_dicom(tmp_path / end, "1.dcm",
                                           f"1.2.826.0.1.3680043.8.{n}"),
                                    AccessionNumber="X" * 64 + end)
                 for n, end in enumerate("AB")]
    _register(sessions, files, ingestion)
    with sessions() as session:
        images = list(session.execute(select(Image)).scalars())
        accessions = set(session.execute(select(Study.accession_number)).scalars())
    assert {i.state for i in images} == {"queued"} and len(images) == 2
    assert len({i.study_id for i in images}) == 2
    assert len(accessions) == 2 and all(len(a or "") <= 64 for a in accessions)
