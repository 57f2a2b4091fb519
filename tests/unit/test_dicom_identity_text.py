"""Patient IDs and accession numbers as pseudonyms and exam keys, whatever their bytes.

Bytes not valid in the declared Specific Character Set read as U+FFFD through pydicom, so
two patients' IDs read alike: they must still get two pseudonyms and two exams (keyed by
their bytes), and the image a note saying so. A multi-value is its backslash-joined text,
and valid UTF-8 in a file declaring no character set is read as UTF-8. Every DICOM here is
generated with pydicom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer.manifest import exam_key
from producer.registration import Ingestion, create_batch, register_files, study_key
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, Study
from shared.enums import Laterality, Priority, View
from shared.imaging.readers import decode, read_header
from shared.imaging.readers.dicom_text import IDENTITY_NOTE, identity
from shared.imaging.types import ImageHeader
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_dicom
from worker.decoding import NOTES_PER_IMAGE, input_notes

BIG = 10**8
KEY = Pseudonymizer(b"unit-test-key-not-a-secret")


def _file(folder: Path, name: str, *, charset: str | list[str] | None = "ISO_IR 192",
          study_uid: str | None = None, laterality: Laterality = Laterality.LEFT,
          **raw: bytes | str) -> Path:
    """A DICOM whose ``raw`` elements hold those bytes exactly (or that text, encoded by
    pydicom in ``charset``); no Specific Character Set when ``charset`` is None, no
    StudyInstanceUID unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    sop = pydicom.uid.generate_uid(entropy_srcs=[str(folder), name])
    path = write_dicom(folder / name, synth_mammogram(np.random.default_rng(2), size=(96, 80)),
                       study_uid=study_uid or "1.2.3", sop_uid=sop, laterality=laterality,
                       view=View.CC, patient_id="X")
    ds = pydicom.dcmread(path)
    if study_uid is None:
        del ds.StudyInstanceUID
    if charset is None:
        ds.pop("SpecificCharacterSet", None)
    else:
        ds.SpecificCharacterSet = charset
    for keyword, value in raw.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        padded = value + b" " * (len(value) % 2) if isinstance(value, bytes) else value
        ds[tag] = DataElement(tag, dictionary_VR(tag), padded)
    ds.save_as(path, enforce_file_format=True)
    return path


def _header(path: Path) -> ImageHeader:
    return read_header(path, pseudonymize=KEY)


# --- bytes not valid in the declared character set ---------------------------------------

def test_patient_ids_that_read_alike_through_replacement_characters_are_two_patients(
        tmp_path: Path) -> None:
    first = _header(_file(tmp_path, "a.dcm", PatientID=b"ID\xff\xfe"))
    second = _header(_file(tmp_path, "b.dcm", PatientID=b"ID\xfa\xfb"))
    again = _header(_file(tmp_path, "c.dcm", PatientID=b"ID\xff\xfe  "))  # padded
    assert first.patient_pseudonym and second.patient_pseudonym
    assert first.patient_pseudonym != second.patient_pseudonym
    assert first.patient_pseudonym == again.patient_pseudonym  # same bytes, same patient
    # Not the pseudonym of the text pydicom reads, which both IDs read as.
    assert first.patient_pseudonym != KEY("ID\ufffd\ufffd")


def test_a_clean_id_keeps_the_pseudonym_of_its_text(tmp_path: Path) -> None:
    header = _header(_file(tmp_path, "a.dcm", PatientID="Zoë-42", AccessionNumber="ACC-7"))
    assert header.patient_pseudonym == KEY("Zoë-42")
    assert header.accession_number == "ACC-7" and header.accession_key is None
    assert study_key(header) == exam_key("accession", f"{KEY('Zoë-42')}:ACC-7")


def test_text_holding_a_replacement_character_is_keyed_by_its_bytes_never_as_a_key_of_bytes(
        tmp_path: Path) -> None:
    # Valid UTF-8 that spells what a byte key looks like ("\ufffd" then hex) is keyed by
    # its own bytes, so the two kinds of key never meet.
    lossy = _header(_file(tmp_path, "a.dcm", PatientID=b"ID\xff\xfe"))
    spelt = _header(_file(tmp_path, "b.dcm", PatientID="\ufffd4944fffe"))
    assert lossy.patient_pseudonym == KEY("\ufffd4944fffe")  # the bytes' key
    assert spelt.patient_pseudonym != lossy.patient_pseudonym


def test_exams_without_a_study_uid_whose_accessions_read_alike_stay_two(
        tmp_path: Path) -> None:
    """The same lossy accession text, one patient's left views and another's right: one
    exam of the two would read one woman's left breast against another's right."""
    left = _header(_file(tmp_path, "l.dcm", PatientID=b"ID\xff\xfe",
                         AccessionNumber=b"ACC-\xff\xfeX"))
    right = _header(_file(tmp_path, "r.dcm", PatientID=b"ID\xfa\xfb",
                          AccessionNumber=b"ACC-\xfa\xfbX", laterality=Laterality.RIGHT))
    assert left.accession_number == right.accession_number == "ACC-\ufffd\ufffdX"  # shown
    assert left.accession_key and right.accession_key
    assert study_key(left) != study_key(right)
    # One patient, two accession numbers that read alike: two exams still.
    same_patient = _header(_file(tmp_path, "s.dcm", PatientID=b"ID\xff\xfe",
                                 AccessionNumber=b"ACC-\xfa\xfbX"))
    assert same_patient.patient_pseudonym == left.patient_pseudonym
    assert study_key(same_patient) != study_key(left)


def test_the_worker_notes_an_identity_read_with_replacement_characters(
        tmp_path: Path) -> None:
    lossy = decode(_file(tmp_path, "a.dcm", PatientID=b"ID\xff\xfe"), max_pixels=BIG)
    note = lossy.notes[IDENTITY_NOTE]
    assert "(0010,0020) Patient ID is not valid in the file's character set, 'ISO_IR 192'" \
        in note
    assert "check it holds one patient's images" in note and "Accession" not in note
    both = decode(_file(tmp_path, "b.dcm", PatientID=b"ID\xff\xfe",
                        AccessionNumber=b"A\xff"), max_pixels=BIG)
    assert "Patient ID and (0008,0050) Accession Number are" in both.notes[IDENTITY_NOTE]
    # Kept whole and first, whatever else the image was noted for.
    crowded = {f"note_{n}": "x" for n in range(NOTES_PER_IMAGE + 3)} | both.notes
    kept = input_notes(crowded)
    assert next(iter(kept)) == IDENTITY_NOTE and kept[IDENTITY_NOTE] == both.notes[IDENTITY_NOTE]
    clean = decode(_file(tmp_path, "c.dcm", PatientID="Zoë", AccessionNumber="Ä1"),
                   max_pixels=BIG)
    assert IDENTITY_NOTE not in clean.notes


def test_registration_stores_two_patients_and_two_exams(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    engine = create_db_engine(Settings(database_url=sqlite_url, broker_url=None,
                                       _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    files = [_file(tmp_path, "l.dcm", PatientID=b"ID\xff\xfe", AccessionNumber=b"ACC-\xff\xfeX"),
             _file(tmp_path, "r.dcm", PatientID=b"ID\xfa\xfb", AccessionNumber=b"ACC-\xfa\xfbX",
                   laterality=Laterality.RIGHT)]
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    register_files(sessions, batch, files, ingestion=Ingestion(pseudonymize=KEY))
    with sessions() as session:
        studies = session.execute(select(Study)).scalars().all()
        images = session.execute(select(Image)).scalars().all()
    assert len(studies) == 2 and len({s.patient_pseudonym for s in studies}) == 2
    assert {s.accession_number for s in studies} == {"ACC-\ufffd\ufffdX"}
    assert len({i.study_id for i in images}) == 2
    engine.dispose()


# --- multi-values, and UTF-8 without a declared character set ----------------------------

def test_a_multi_value_is_its_backslash_joined_text(tmp_path: Path) -> None:
    header = _header(_file(tmp_path, "a.dcm", charset=None, PatientID="PID1\\PID2",
                           AccessionNumber="ACC1\\ACC2"))
    assert header.accession_number == "ACC1\\ACC2" and header.accession_key is None
    patient = KEY("PID1\\PID2")
    assert header.patient_pseudonym == patient
    assert study_key(header) == exam_key("accession", f"{patient}:ACC1\\ACC2")


@pytest.mark.parametrize("charset, written", [
    (None, "Müller".encode()),  # UTF-8, undeclared: a common vendor quirk
    ("ISO_IR 192", "Müller".encode()),
    ("ISO_IR 100", "Müller".encode("latin-1")),
    (None, "Müller".encode("latin-1")),  # not valid UTF-8: Latin-1, as before
    ("ISO_IR 6", "Müller".encode()),  # the default repertoire, declared
])
def test_one_name_in_any_encoding_is_one_patient(tmp_path: Path, charset: str | None,
                                                 written: bytes) -> None:
    header = _header(_file(tmp_path, "a.dcm", charset=charset, PatientID=written,
                           AccessionNumber=b"ACC-" + written, Manufacturer=written))
    assert header.patient_pseudonym == KEY("Müller")
    assert header.accession_number == "ACC-Müller" and header.accession_key is None
    assert header.manufacturer == "Müller"
    assert IDENTITY_NOTE not in decode(_file(tmp_path, "b.dcm", charset=charset,
                                             PatientID=written), max_pixels=BIG).notes


def test_identity_of_a_dataset_built_in_memory() -> None:
    ds = Dataset()
    ds.PatientID = "ID\ufffd"
    value = identity(ds, "PatientID")
    assert value is not None and not value.clean and value.shown == "ID\ufffd"
    assert value.key == "\ufffd" + "ID\ufffd".encode().hex()
    ds.PatientID = "  "
    assert identity(ds, "PatientID") is None
