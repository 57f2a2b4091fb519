"""A file known by its bytes (no DICOM UID) sent again with other metadata.

A PNG, JPEG, TIFF or PGM takes its laterality, view and exam from a manifest row or its
name, not from the file. mdb023.png read alone (right, by the mini-MIAS name), then sent in
a folder whose manifest made it a left view of exam PX1, was taken for a copy of the first
image: no warning, and exam PX1 never held the malignant view, so its score and worklist
row left it out. Where the image's values were stated (a manifest row), the file is, as a
DICOM whose SOP Instance UID comes back with another laterality, view, exam or patient,
refused as a ``uid_conflict`` saying what differs; the same bytes with the same metadata
(or fewer) stay a plain copy. Where they were only inferred (its name, or none), the
manifest row corrects them: tests/unit/test_inferred_metadata_correction.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.registration import Ingestion, ingestion_for
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import DuplicateSubmission, Study
from shared.enums import ErrorCode
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.db import registered_batch, stored_images

KEY = "0123456789abcdef-test-key"
CONFLICT = ErrorCode.UID_CONFLICT.value


@pytest.fixture
def sessions(sqlite_url: str) -> sessionmaker[Session]:
    engine = create_db_engine(_settings(sqlite_url))
    ensure_schema(engine)
    return make_session_factory(engine)


def _settings(url: str) -> Settings:
    return Settings(database_url=url, broker_url=None, _env_file=None,  # type: ignore[call-arg]
                    patient_id_key=SecretStr(KEY))


def _png(path: Path, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, synth_mammogram(np.random.default_rng(seed), size=(96, 80)) << 4)


def _ingestion(url: str, tmp_path: Path, rows: dict[str, str] | None,
               name: str = "m.csv") -> Ingestion:
    """``rows``: {path relative to tmp_path: "patient_id,laterality,view,study_id"}; None:
    no manifest (the file name convention alone)."""
    if rows is None:
        return ingestion_for(_settings(url))
    manifest = tmp_path / name
    manifest.write_text("path,patient_id,laterality,view,study_id\n"
                        + "".join(f"{path},{values}\n" for path, values in rows.items()))
    return ingestion_for(_settings(url), manifest)


def _copies(sessions: sessionmaker[Session], batch: int) -> list[tuple[str, int]]:
    with sessions() as session:
        return [(Path(c.source).name, c.image_id) for c in session.execute(
            select(DuplicateSubmission).where(DuplicateSubmission.batch_id == batch)).scalars()]


# (first metadata, then, what the message says differs). None: no manifest row, so the
# mini-MIAS name alone (mdb023: right, MLO, read alone).
CONFLICTS = {
    "a row with no exam, then another laterality in an exam": (
        ",R,MLO,", ",L,MLO,PX1",
        "they differ in laterality, exam (image {id}'s none: it was read alone; this "
        "file's an exam without a StudyInstanceUID, keyed by its manifest study_id)"),
    "read alone, then the same laterality in an exam": (
        ",R,MLO,", ",R,MLO,PX1", "they differ in exam (image {id}'s none: it was read alone"),
    "another exam": (",R,MLO,EX1", ",R,MLO,EX2", "they differ in exam (image {id}'s an exam"),
    "another view": (",R,CC,EX1", ",R,MLO,EX1", "they differ in view."),
    "another patient": ("PAT-A,R,MLO,EX1", "PAT-B,R,MLO,EX1", "they differ in exam (image"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_a_file_known_by_its_bytes_sent_with_other_metadata_is_a_conflict(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session], case: str) -> None:
    first_row, then_row, differ = CONFLICTS[case]
    alone = _png(tmp_path / "mdb023.png")
    again = tmp_path / "P1" / "mdb023.png"  # a byte-identical copy
    again.parent.mkdir()
    shutil.copyfile(alone, again)
    first = _ingestion(sqlite_url, tmp_path,
                       None if first_row is None else {"mdb023.png": first_row}, "first.csv")
    registered_batch(sessions, [alone], first)
    [original] = stored_images(sessions)
    then = _ingestion(sqlite_url, tmp_path, {"P1/mdb023.png": then_row}, "then.csv")
    batch = registered_batch(sessions, [again], then)

    kept, clash = stored_images(sessions)
    assert (kept.id, kept.laterality, kept.view, kept.study_id, kept.state) == (
        original.id, original.laterality, original.view, original.study_id, "queued")
    assert (clash.state, clash.error_code, clash.study_id, clash.batch_id) == (
        "failed", CONFLICT, None, batch)
    assert clash.source == str(again) and _copies(sessions, batch) == []
    message = clash.error_message or ""
    assert message.startswith(f"Its bytes are already image {original.id} (80 x 96 px, ")
    assert differ.format(id=original.id) in message
    assert f"correct its manifest row to image {original.id}'s" in message
    # A manifest row's values are stated: none corrects them.
    assert f"If image {original.id}'s are the wrong ones, they cannot be changed" in message
    assert "PAT-" not in message  # pseudonyms only
    if case == "another patient":
        assert "patient (image" in message

    # Sent again unchanged: a copy of its refusal; with image 1's values: a copy of image 1.
    batch = registered_batch(sessions, [again], then)
    assert _copies(sessions, batch) == [("mdb023.png", clash.id)]
    corrected = _ingestion(sqlite_url, tmp_path, None if first_row is None
                           else {"P1/mdb023.png": first_row}, "corrected.csv")
    batch = registered_batch(sessions, [again], corrected)
    assert _copies(sessions, batch) == [("mdb023.png", original.id)]
    assert len(stored_images(sessions)) == 2


def test_two_copies_in_one_batch_with_other_metadata_are_a_conflict(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    left = _png(tmp_path / "in" / "a.png")
    right = tmp_path / "in" / "b.png"
    shutil.copyfile(left, right)
    registered_batch(sessions, [left, right], _ingestion(
        sqlite_url, tmp_path, {"in/a.png": ",L,CC,EX1", "in/b.png": ",R,CC,EX1"}))
    image, clash = stored_images(sessions)
    assert (Path(image.source).name, image.laterality, image.state) == ("a.png", "L", "queued")
    assert (Path(clash.source).name, clash.error_code) == ("b.png", CONFLICT)
    assert "they differ in laterality." in (clash.error_message or "")


# (first metadata, then): the same bytes sent again saying nothing against the image.
COPIES = {
    "the same manifest row": (",L,MLO,PX1", ",L,MLO,PX1"),
    "a row leaving values out": (",L,MLO,PX1", ",,,"),
    "in an exam, then by its name alone": (",R,MLO,PX1", None),
    "the same patient's exam": ("PAT-A,R,MLO,EX1", "PAT-A,R,MLO,EX1"),
}


@pytest.mark.parametrize("case", list(COPIES))
def test_a_file_known_by_its_bytes_sent_again_with_the_same_or_fewer_values_is_a_copy(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session], case: str) -> None:
    first_row, then_row = COPIES[case]
    path = _png(tmp_path / "mdb023.png")
    registered_batch(sessions, [path], _ingestion(sqlite_url, tmp_path, {"mdb023.png": first_row},
                                           "first.csv"))
    then = _ingestion(sqlite_url, tmp_path, None if then_row is None
                      else {"mdb023.png": then_row}, "then.csv")
    batch = registered_batch(sessions, [path], then)  # another batch: the path is no excuse
    [image] = stored_images(sessions)
    assert image.state == "queued" and image.error_code is None
    assert _copies(sessions, batch) == [("mdb023.png", image.id)]


def test_a_file_refused_unread_then_given_metadata_stays_a_copy_of_its_failure(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    # Refused before any metadata was read: there is nothing its new row contradicts.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG at all")
    registered_batch(sessions, [broken], _ingestion(sqlite_url, tmp_path, None))
    [failed] = stored_images(sessions)
    assert failed.error_code == ErrorCode.NOT_DICOM_OR_IMAGE.value
    batch = registered_batch(sessions, [broken], _ingestion(sqlite_url, tmp_path,
                                                     {"broken.png": ",L,CC,EX1"}))
    assert len(stored_images(sessions)) == 1
    assert _copies(sessions, batch) == [("broken.png", failed.id)]


def test_a_file_refused_unread_and_retried_takes_its_manifest_row(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused unread for a fault of this software (retried whenever sent again), then sent
    with its manifest row: the retried image was queued with no laterality, view or exam,
    scored read alone, its row dropped without a word."""
    path = _png(tmp_path / "x.png")
    ingestion = _ingestion(sqlite_url, tmp_path, {"x.png": ",L,CC,EX1"})

    def fault(*_: object, **__: object) -> None:
        raise RuntimeError("a reader's fault")

    with monkeypatch.context() as patched:
        patched.setattr(registration, "read_header", fault)
        registered_batch(sessions, [path], ingestion)
    [refused] = stored_images(sessions)
    assert (refused.error_code, refused.format) == (ErrorCode.INTERNAL.value, "unknown")
    batch = registered_batch(sessions, [path], ingestion)
    [image] = stored_images(sessions)
    with sessions() as session:
        exam = session.execute(select(Study)).scalar_one()
    assert (image.id, image.state, image.batch_id) == (refused.id, "queued", batch)
    assert (image.format, image.rows, image.columns) == ("png", 96, 80)
    assert (image.laterality, image.view, image.study_id) == ("L", "CC", exam.id)
