"""`mammo run` on two patients whose IDs and accession numbers read alike through U+FFFD.

Under ISO_IR 192 the patient IDs ``ID\\xff\\xfe`` and ``ID\\xfa\\xfb`` are not valid UTF-8;
pydicom reads both as "ID\ufffd\ufffd", and their accession numbers alike too. Without a
StudyInstanceUID, one patient's left views and the other's right views were one exam with
one pseudonym: the worklist compared one woman's left breast with another's right, unflagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from sqlalchemy import create_engine, select

from shared.db.schema import Study
from shared.enums import Laterality, View
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.processes import mammo_env, run_mammo


def _view(folder: Path, name: str, laterality: Laterality, view: View, patient: bytes,
          accession: bytes, seed: int) -> None:
    path = write_dicom(folder / name, synth_mammogram(np.random.default_rng(seed),
                                                      laterality=laterality),
                       study_uid="1.2.3", sop_uid=pydicom.uid.generate_uid(entropy_srcs=[name]),
                       laterality=laterality, view=view, patient_id="X")
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds[0x00100020] = DataElement(0x00100020, "LO", patient)
    ds[0x00080050] = DataElement(0x00080050, "SH", accession)
    ds.save_as(path, enforce_file_format=True)


def test_two_patients_whose_ids_read_alike_are_two_exams(tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:
    folder = tmp_path / "exams"
    folder.mkdir()
    for n, view in enumerate((View.CC, View.MLO)):
        _view(folder, f"a_L{view.value}.dcm", Laterality.LEFT, view, b"ID\xff\xfe",
              b"ACC-\xff\xfeX ", seed=n)
        _view(folder, f"b_R{view.value}.dcm", Laterality.RIGHT, view, b"ID\xfa\xfb",
              b"ACC-\xfa\xfbX ", seed=10 + n)
    db = tmp_path / "run.db"
    env = mammo_env(database_url=f"sqlite:///{db}", model=str(tiny_model_dir),
                    report_dir=str(tmp_path / "reports"),
                    patient_id_key="integration-test-key-0123456789abcdef")
    done = run_mammo(["run", str(folder), "--format", "json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted(r["state"] for r in rows) == ["done"] * 4
    exams: dict[str, set[str]] = {"a": set(), "b": set()}
    for row in rows:
        exams[Path(row["source"]).name[0]].add(row["study_uid"])
    # Each patient's two views are one exam, and the two patients two.
    assert all(len(uids) == 1 for uids in exams.values())
    assert exams["a"] != exams["b"]
    for row in rows:  # and each view says why its exam's grouping is to be checked
        note = row["input_notes"]["identity_charset"]
        assert "Patient ID and (0008,0050) Accession Number are not valid" in note
        assert "check it holds one patient's images" in note
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        studies = conn.execute(select(Study.patient_pseudonym, Study.accession_number)).all()
    engine.dispose()
    assert len(studies) == 2
    assert len({pseudonym for pseudonym, _ in studies}) == 2
    assert {accession for _, accession in studies} == {"ACC-\ufffd\ufffdX"}
