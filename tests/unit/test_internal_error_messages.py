"""What a person reads of an unexpected error, and of a header value: one short printable
line. A library's text may quote the file's bytes or hold control characters (a terminal
obeys ESC; a report shows garbage); the worker put it raw into ``internal_error`` messages,
and header values were quoted raw into notes. The error in full stays in the log."""

from __future__ import annotations

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
from shared.imaging.readers import decode, dicom_checks, dicom_meta
from shared.imaging.readers.messages import described, printable, summary
from shared.synthetic import make_exam_set, synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

# A library's text as it may come: a terminal title sequence, a bell, the file's bytes
# quoted, a line break, and far too long.
NASTY = ("codec said \x1b]0;owned\x07 at b'\\x00\\x01\\xfe' \r\nthen " + "more " * 100)
SAID = "codec said ?]0;owned? at <binary data> then more more"


def _person_readable(message: str) -> None:
    assert message.isprintable(), repr(message)
    assert "\\x" not in message and "b'" not in message, message


def test_summary_and_described_are_one_short_printable_line() -> None:
    text = summary(RuntimeError(NASTY))
    _person_readable(text)
    assert text.startswith(SAID) and text.endswith(" [...]") and len(text) <= 120
    assert described(RuntimeError(NASTY)) == f"RuntimeError: {text}"
    assert described(KeyError()) == "KeyError"  # not "KeyError: KeyError"
    assert printable("a\x00b\x1bc\u2028d") == "a?b?c?d"


def test_a_header_value_is_quoted_printable_wherever_it_is_quoted(tmp_path: Path) -> None:
    assert dicom_meta.quoted(" a\x1b[31m\x00b ") == "'a?[31m?b'"
    assert dicom_meta.quoted("\x07" * 30) == "'" + "?" * 20 + "...'"
    # A pixel spacing note (read by dicom_meta, not dicom_voi) quotes the value.
    path = write_dicom(tmp_path / "mg.dcm", synth_mammogram(np.random.default_rng(8),
                                                            size=(160, 128)),
                       study_uid="1.2.826.0.1.3680043.8.498.64",
                       sop_uid="1.2.826.0.1.3680043.8.498.65", laterality=Laterality.LEFT,
                       view=View.CC)
    rewrite_dicom(path, ImagerPixelSpacing="98765432")
    data = path.read_bytes()
    assert data.count(b"98765432") == 1
    path.write_bytes(data.replace(b"98765432", b"0\x1b[J\x07\x00.1"))
    note = decode(path, max_pixels=10**8).notes["pixel_spacing"]
    _person_readable(note)
    assert note.startswith("(0018,1164) Imager Pixel Spacing '0?[J??.1' is not two "), note


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _failed_messages(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        rows = session.execute(select(Image).where(Image.state == "failed")).scalars().all()
    assert {row.error_code for row in rows} == {ErrorCode.INTERNAL.value}
    return [row.error_message or "" for row in rows]


def test_an_unexpected_reader_error_is_stored_short_and_printable(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(update={"decode_processes": 0})  # the patch applies
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=23)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, files).new_ids
    culprit, triage = files[1].name, dicom_checks.triage

    def faulty(ds: Dataset, path: Path) -> dict[str, str]:
        if path.name == culprit:  # a fault of ours (not the file's): internal_error
            raise ImportError(NASTY)
        return triage(ds, path)

    monkeypatch.setattr(dicom_checks, "triage", faulty)
    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))

    assert (result.done, result.failed) == (len(ids) - 1, 1)
    [message] = _failed_messages(sessions)
    _person_readable(message)
    assert message.startswith(f"Unexpected error while reading the image: ImportError: {SAID}")
    assert len(message) <= len("Unexpected error while reading the image: ImportError: ") + 120


def test_a_model_error_is_stored_short_and_printable(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=24)[:2]
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, files).new_ids
    runtime = WorkerRuntime(settings)

    def fails(_batch: np.ndarray) -> object:
        raise RuntimeError(NASTY)

    monkeypatch.setattr(runtime.classifier, "predict", fails)
    result = process_chunk(ids, token="task-1", runtime=runtime)

    assert result.failed == len(ids)
    for message in _failed_messages(sessions):
        _person_readable(message)
        assert message.startswith(f"The model could not score this image: RuntimeError: {SAID}")
        assert len(message) <= len("The model could not score this image: RuntimeError: ") + 120
