"""A fault of this software while reading a DICOM is never recorded as the file's.

A helper missing from a module (a source file mid-edit, a rename) or a NameError made valid
images ``unreadable``, which is not retried when the same file is submitted again. The
reader now lets such a fault through: registration records the file as ``internal_error``,
and the worker fails the image with ``internal_error``, goes on with the others, and the
image is retried when submitted again. Errors of a damaged file stay ``unreadable``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import ErrorCode, Laterality, Priority, View
from shared.errors import UnreadableImageError
from shared.imaging.readers import decode, dicom_checks, dicom_meta, dicom_voi, read_header
from shared.synthetic import make_exam_set, synth_mammogram, write_dicom
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

BIG = 10**8


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    pixels = synth_mammogram(np.random.default_rng(8), size=(160, 128))
    return write_dicom(tmp_path / "mg.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.90",
                       sop_uid="1.2.826.0.1.3680043.8.498.91", laterality=Laterality.LEFT,
                       view=View.CC)


def _raising(exc: Exception) -> Callable[..., object]:
    def helper(*_args: object, **_kwargs: object) -> object:
        raise exc
    return helper


def _missing_element(ds: Dataset, *_args: object) -> object:
    return ds.NoSuchKeyword  # pydicom's AttributeError on its own Dataset


# (what the helper does, the error the reader raises): a fault of ours as raised, a damaged
# file's as unreadable.
_FAULTS: list[tuple[str, Callable[..., object] | None, type[Exception]]] = [
    ("helper missing from its module", None, AttributeError),
    ("NameError", _raising(NameError("name 'spacing' is not defined")), NameError),
    ("ImportError", _raising(ModuleNotFoundError("No module named 'gdcm'")),
     ModuleNotFoundError),
    ("ValueError of a value", _raising(ValueError("could not convert string to float")),
     UnreadableImageError),
    ("element missing from the Dataset", _missing_element, UnreadableImageError),
]


@pytest.mark.parametrize("what, helper, raised", _FAULTS, ids=[f[0] for f in _FAULTS])
def test_a_fault_of_ours_reading_the_header_is_raised_a_file_fault_is_unreadable(
        dicom_file: Path, monkeypatch: pytest.MonkeyPatch, what: str,
        helper: Callable[..., object] | None, raised: type[Exception]) -> None:
    # The observed case: dicom_voi lost ``describe`` while its file was being edited.
    if helper is None:
        monkeypatch.delattr(dicom_voi, "describe")
    else:
        monkeypatch.setattr(dicom_meta, "view_flags", helper)
    with pytest.raises(Exception) as caught:
        read_header(dicom_file)
    assert type(caught.value) is raised, (what, caught.value)


@pytest.mark.parametrize("what, helper, raised", _FAULTS, ids=[f[0] for f in _FAULTS])
def test_a_fault_of_ours_decoding_is_raised_a_file_fault_is_unreadable(
        dicom_file: Path, monkeypatch: pytest.MonkeyPatch, what: str,
        helper: Callable[..., object] | None, raised: type[Exception]) -> None:
    if helper is None:  # looked up inside a guarded step, as the observed one was
        monkeypatch.delattr(dicom_voi, "output_range")
    else:
        monkeypatch.setattr(dicom_checks, "triage", helper)
    with pytest.raises(Exception) as caught:
        decode(dicom_file, max_pixels=BIG)
    assert type(caught.value) is raised, (what, caught.value)


def _sessions(url: str) -> sessionmaker[Session]:
    engine = create_db_engine(Settings(database_url=url, broker_url=None,
                                       _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    return make_session_factory(engine)


def test_registration_records_a_fault_of_ours_as_internal_error_not_unreadable(
        tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=21)
    sessions = _sessions(sqlite_url)
    monkeypatch.delattr(dicom_voi, "describe")
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    result = register_files(sessions, batch, files)
    assert len(result.rejected_ids) == len(files)  # every file read, none blamed
    with sessions() as session:
        rows = session.execute(select(Image)).scalars().all()
    assert {row.error_code for row in rows} == {ErrorCode.INTERNAL.value}
    message = rows[0].error_message or ""
    assert "fault in this software, not in the file" in message, message
    assert "AttributeError" in message and "describe" in message, message
    # Fixed: the same files register and are queued.
    monkeypatch.undo()
    batch = create_batch(sessions, name="t2", priority=Priority.ROUTINE, mode="test")
    again = register_files(sessions, batch, files)
    assert len(again.new_ids) == len(files)


def test_the_worker_fails_an_image_it_faults_on_as_internal_error_and_it_is_retried(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(update={"decode_processes": 0})  # the patch applies
    sessions = _sessions(settings.database_url)
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=22)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, files).new_ids
    culprit, triage = files[1].name, dicom_checks.triage

    def faulty(ds: Dataset, path: Path) -> dict[str, str]:
        if path.name == culprit:
            raise AttributeError("module 'shared.imaging.readers.dicom_meta' has no "
                                 "attribute 'voi_description'", obj=dicom_meta)
        return triage(ds, path)

    monkeypatch.setattr(dicom_checks, "triage", faulty)
    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))

    assert (result.done, result.failed) == (len(ids) - 1, 1)  # the worker went on
    with sessions() as session:
        failed = session.execute(select(Image).where(Image.state == "failed")).scalar_one()
    assert failed.id == ids[1] and failed.error_code == ErrorCode.INTERNAL.value
    assert "voi_description" in (failed.error_message or "")
    # README: internal_error is retried whenever the file is submitted again.
    batch = create_batch(sessions, name="again", priority=Priority.ROUTINE, mode="test")
    again = register_files(sessions, batch, [files[1]])
    assert again.new_ids == [ids[1]] and again.retried == {ids[1]: ErrorCode.INTERNAL.value}
