"""Values the database would refuse, and failed images queued again.

A NUL inside a header value (pydicom keeps one within a value, not the padding ones) or a
manifest value made PostgreSQL refuse the whole registration block, good files included;
a value the database still refuses fails that one file; and a failed image queued again is
a new file's: not read from where the watcher filed the failed one, and queued from now.
"""

from __future__ import annotations

import shutil
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.manifest import Manifest
from producer.registration import Ingestion, create_batch, ingestion_for, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image, Study
from shared.enums import ErrorCode, Laterality, Priority, View
from shared.errors import InputError
from shared.imaging import readers
from shared.imaging.identity import current_location, file_has_identity
from shared.imaging.types import ImageHeader
from shared.synthetic import synth_mammogram, write_dicom
from shared.timeutil import utcnow
from tests.helpers.bad_inputs import good_dicom, good_png
from tests.helpers.dicom_edit import rewrite_dicom

KEY = "0123456789abcdef-test-key"


@pytest.fixture
def sessions(sqlite_url: str) -> sessionmaker[Session]:
    engine = create_db_engine(Settings(database_url=sqlite_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    return make_session_factory(engine)


def _keyed(url: str) -> Ingestion:
    return ingestion_for(Settings(database_url=url, _env_file=None,  # type: ignore[call-arg]
                                  patient_id_key=SecretStr(KEY)))


def _batch(sessions: sessionmaker[Session]) -> int:
    return create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")


def _with(path: Path, **changes: object) -> Path:
    with warnings.catch_warnings():  # pydicom warns of the invalid UID this sender writes
        warnings.simplefilter("ignore", UserWarning)
        rewrite_dicom(path, **changes)
    return path


def test_storable_escapes_a_nul_and_keeps_values_apart() -> None:
    from shared.imaging.header_bounds import bounded, fitted_identity, storable

    assert storable("GE\x00Med") == "GE\\x00Med"
    assert storable("plain") == "plain"
    assert storable("1.2\x003") != storable("1.23")
    header = bounded(ImageHeader(format="dicom", identity="sop:1.2\x003",
                                 sop_instance_uid="1.2\x003", manufacturer="GE\x00",
                                 view_flags=("spot\x00x",), laterality=Laterality.LEFT))
    assert header.identity == "sop:1.2\\x003" and header.sop_instance_uid == "1.2\\x003"
    assert (header.manufacturer, header.view_flags) == ("GE\\x00", ("spot\\x00x",))
    assert header.laterality is Laterality.LEFT
    # A SQLite database, which takes a NUL, may hold the identity unescaped.
    assert fitted_identity("sop:1.2\x003") == header.identity
    # Escaped first, then fitted: the stored value fits its column.
    long_uid = "1." + "\x00" * 40
    assert len(bounded(ImageHeader(format="dicom", identity=f"sop:{long_uid}",
                                   sop_instance_uid=long_uid)).identity) <= len("sop:") + 64


def test_header_values_with_a_nul_register_escaped_beside_the_good_files(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # PostgreSQL refused the whole block ("text fields cannot contain NUL"): no file of it
    # was registered, and `mammo submit` ended in a traceback.
    sessions = each_backend_sessions
    good = good_dicom(tmp_path / "good.dcm", 1)
    bad = _with(good_dicom(tmp_path / "bad.dcm", 2), Manufacturer="GE\x00Med",
                SOPInstanceUID="1.2.826.0.1.3680043.9.7799.2\x001",
                AccessionNumber="A\x00B", ManufacturerModelName="M\x00X",
                WindowCenterWidthExplanation="W\x00X")
    reg = register_files(sessions, _batch(sessions), [good, bad])
    assert len(reg.new_ids) == 2 and reg.rejected_ids == []
    with sessions() as session:
        image = session.execute(select(Image).where(Image.source == str(bad))).scalar_one()
        study = session.get(Study, image.study_id)
    assert (image.manufacturer, image.manufacturer_model) == ("GE\\x00Med", "M\\x00X")
    assert image.identity == "sop:1.2.826.0.1.3680043.9.7799.2\\x001"
    assert image.voi is not None and image.voi.endswith("(W\\x00X)")
    assert study is not None and study.accession_number == "A\\x00B"
    # The worker and the watcher recognise the file by the identity stored.
    assert file_has_identity(bad, image.identity)


def test_a_manifest_value_with_a_nul_registers_escaped(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    sessions = each_backend_sessions
    good_png(tmp_path / "a.png", 1)
    good_png(tmp_path / "b.png", 2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,laterality,view,study_id,accession\n"
                        "a.png,L,CC,EX1,\nb.png,R,CC,EX\x002,AC\x00C\n")
    # The settings' database is never opened (the sessions are the fixture's).
    unused = Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}", _env_file=None)  # type: ignore[call-arg]
    ingestion = ingestion_for(unused, manifest)
    reg = register_files(sessions, _batch(sessions), [tmp_path / "a.png", tmp_path / "b.png"],
                         ingestion=ingestion)
    assert len(reg.new_ids) == 2
    with sessions() as session:
        keys = dict(session.execute(select(Study.study_uid, Study.accession_number)).all())
    assert keys == {"manifest:EX1": None, "manifest:EX\\x002": "AC\\x00C"}
    # Escaped as the manifest is read, before the exam's key is made of it.
    entry = Manifest.load(manifest, pseudonymize=None).lookup(tmp_path / "b.png")
    assert entry is not None and (entry.study_id, entry.accession) == ("EX\\x002", "AC\\x00C")


def test_a_failure_message_quoting_a_nul_is_stored_escaped(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = each_backend_sessions
    good, bad = good_dicom(tmp_path / "good.dcm", 1), good_dicom(tmp_path / "bad.dcm", 2)
    read = registration.read_header

    def reader(path: Path, **kw: Any) -> ImageHeader:
        if path.name == "bad.dcm":  # a reader's message naming the value it found
            raise InputError("(0008,0070) Manufacturer 'GE\x00Med' is not one we read",
                             code=ErrorCode.UNREADABLE)
        return read(path, **kw)

    monkeypatch.setattr(registration, "read_header", reader)
    reg = register_files(sessions, _batch(sessions), [good, bad])
    assert len(reg.new_ids) == 1 and len(reg.rejected_ids) == 1
    with sessions() as session:
        message = session.execute(select(Image.error_message)
                                  .where(Image.id == reg.rejected_ids[0])).scalar_one()
    assert message == "(0008,0070) Manufacturer 'GE\\x00Med' is not one we read"


def test_a_value_the_database_refuses_fails_that_file_alone(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever value a later fault lets through, one file's refusal must not keep the
    # block's good files out (nor stop `mammo watch`): the files go one by one, and the
    # refused one is failed with the database's reason.
    sessions = each_backend_sessions
    files = [good_dicom(tmp_path / f"{name}.dcm", seed)
             for seed, name in enumerate(("a", "bad", "c"), start=1)]
    row = registration._row

    def faulty_row(path: Path, *args: Any, **kw: Any) -> dict[str, Any]:
        made = row(path, *args, **kw)
        if path.name == "bad.dcm" and made["state"] == "queued":
            made["format"] = None  # NOT NULL: an IntegrityError on either database
        return made

    monkeypatch.setattr(registration, "_row", faulty_row)
    batch = _batch(sessions)
    reg = register_files(sessions, batch, files)
    with sessions() as session:
        rows = dict(session.execute(select(Image.source, Image.state)).all())
        refused = session.execute(select(Image).where(Image.state == "failed")).scalar_one()
        submitted = session.get(Batch, batch)
    assert rows == {str(files[0]): "queued", str(files[1]): "failed",
                    str(files[2]): "queued"}
    assert len(reg.new_ids) == 2 and reg.rejected_ids == [refused.id]
    assert refused.error_code == ErrorCode.INTERNAL.value and refused.error_message
    assert "database refused" in refused.error_message
    assert "IntegrityError" in refused.error_message
    assert submitted is not None and submitted.submitted == 3


def test_a_nul_postgresql_refuses_fails_that_file_alone(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real refusal: PostgreSQL's DataError for a NUL that reached it unescaped.
    engine = create_db_engine(Settings(database_url=postgres_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    good = good_dicom(tmp_path / "good.dcm", 1)
    bad = _with(good_dicom(tmp_path / "bad.dcm", 2), Manufacturer="GE\x00Med")
    for module in (registration, readers):  # a NUL not escaped
        monkeypatch.setattr(module, "bounded", lambda header: header)
    reg = register_files(sessions, _batch(sessions), [good, bad])
    with sessions() as session:
        rows = dict(session.execute(select(Image.source, Image.error_message)).all())
    engine.dispose()
    assert len(reg.new_ids) == 1 and len(reg.rejected_ids) == 1
    assert rows[str(good)] is None
    assert "NUL" in rows[str(bad)] and "DataError" in rows[str(bad)]


def _dicom(path: Path, patient_id: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, synth_mammogram(np.random.default_rng(3), size=(96, 80)),
                       study_uid="1.2.826.0.1.3680043.8.498.300",
                       sop_uid="1.2.826.0.1.3680043.8.498.301", laterality=Laterality.LEFT,
                       view=View.CC, patient_id=patient_id)


def _filed_away(sessions: sessionmaker[Session], image_id: int, copy: Path) -> None:
    """The watcher filed the failed file (``archived_path``) a while ago."""
    with sessions() as session:
        session.execute(update(Image).where(Image.id == image_id).values(
            archived_path=str(copy), created_at=utcnow() - timedelta(hours=2)))
        session.commit()


def _assert_queued_as_a_new_file(sessions: sessionmaker[Session], image_id: int,
                                 path: Path) -> None:
    with sessions() as session:
        image = session.get(Image, image_id)
        assert image is not None
        # A sweep between the retry's commit and its send: the image is not long queued.
        now = utcnow()
        stale = lifecycle.stale_images(session, queued_before=now - timedelta(minutes=10),
                                       claimed_before=now - timedelta(minutes=10))
    assert (image.state, image.source, image.archived_path) == ("queued", str(path), None)
    assert current_location(image.source, image.archived_path) == str(path)
    assert image_id not in stale


def test_a_retried_image_is_read_from_its_new_file_and_queued_from_now(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    # The half file failed truncated and was filed to failed/x.dcm; the modality re-sent
    # the complete file under the same name. The worker read failed/x.dcm again (and
    # failed it truncated again), and a sweep before the send re-sent it as 'lost'.
    path = _dicom(tmp_path / "in" / "x.dcm")
    reg = register_files(sessions, _batch(sessions), [path])
    (image_id,) = reg.new_ids
    with sessions() as session:
        lifecycle.mark_failed(session, image_id, ErrorCode.TRUNCATED, "cut short")
        session.commit()
    filed = tmp_path / "in" / "failed" / "x.dcm"
    filed.parent.mkdir()
    shutil.copy(path, filed)
    _filed_away(sessions, image_id, filed)
    again = register_files(sessions, _batch(sessions), [path],
                           ingestion=Ingestion(changed=frozenset({path})))
    assert again.retried == {image_id: ErrorCode.TRUNCATED.value}
    _assert_queued_as_a_new_file(sessions, image_id, path)


def test_an_adopted_refusal_is_read_from_its_file_and_queued_from_now(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    # Refused for want of a key, filed to failed/ by the watcher, resubmitted once the key
    # is set: the refused image itself is queued, and must not keep the refusal's traces.
    path = _dicom(tmp_path / "in" / "x.dcm", patient_id="PAT-1")
    reg = register_files(sessions, _batch(sessions), [path])
    (image_id,) = reg.rejected_ids
    filed = tmp_path / "in" / "failed" / "x.dcm"
    filed.parent.mkdir()
    shutil.copy(path, filed)
    _filed_away(sessions, image_id, filed)
    again = register_files(sessions, _batch(sessions), [path], ingestion=_keyed(sqlite_url))
    assert again.retried == {image_id: ErrorCode.NO_PSEUDONYM_KEY.value}
    _assert_queued_as_a_new_file(sessions, image_id, path)


def test_a_workers_failure_message_quoting_a_nul_is_stored_escaped(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # The worker's failures (a decoder naming the PhotometricInterpretation it found) go
    # through lifecycle.mark_failed, not registration: on PostgreSQL a raw NUL failed the
    # write, and the image stayed processing until its attempts ran out.
    sessions = each_backend_sessions
    [image_id] = register_files(sessions, _batch(sessions),
                                [good_dicom(tmp_path / "a.dcm", 1)]).new_ids
    with sessions() as session:
        assert lifecycle.mark_failed(session, image_id, ErrorCode.UNREADABLE,
                                     "PhotometricInterpretation 'MONO\x00X' is not one we read")
        session.commit()
        stored = session.execute(select(Image.state, Image.error_message)
                                 .where(Image.id == image_id)).one()
    assert tuple(stored) == ("failed", "PhotometricInterpretation 'MONO\\x00X' is not one we read")
