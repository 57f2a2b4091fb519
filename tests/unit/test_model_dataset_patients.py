"""Patients in the layouts that name none: DICOM headers, else an honest warning."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.datasets import (
    LabelledImage,
    layout_of,
    load_dataset,
    unknown_patients_warning,
    without_patient,
)
from shared.enums import Label, Laterality, View
from shared.synthetic import synth_mammogram, write_dicom


def _dicom(path: Path, n: int, patient: str, laterality: Laterality) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, synth_mammogram(np.random.default_rng(n), size=(96, 80)),
                study_uid=f"1.2.7.{ord(patient[-1])}", sop_uid=f"1.2.7.1.{n}",
                laterality=laterality, view=View.CC, patient_id=patient)


def test_class_folder_dicoms_are_grouped_by_their_patient_and_placed_by_their_header(
        tmp_path: Path) -> None:
    _dicom(tmp_path / "normal/a.dcm", 1, "PID-A", Laterality.LEFT)
    _dicom(tmp_path / "malignant/b.dcm", 2, "PID-A", Laterality.RIGHT)
    _dicom(tmp_path / "normal/c.dcm", 3, "PID-B", Laterality.LEFT)
    _dicom(tmp_path / "benign/d.dcm", 4, "PID-B", Laterality.RIGHT)
    images = {i.id: i for i in load_dataset(tmp_path)}
    patients = {key: image.patient_id for key, image in images.items()}
    assert patients["normal/a"] == patients["malignant/b"] != patients["normal/c"]
    assert patients["normal/c"] == patients["benign/d"]
    # Grouped, never named: the PatientID is not what the splits or the metadata see.
    assert not any("PID" in p for p in patients.values())
    assert images["malignant/b"].laterality is Laterality.RIGHT
    assert images["malignant/b"].view == "CC"
    assert without_patient(list(images.values())) == 0
    assert unknown_patients_warning(list(images.values()), "class_folders") is None


def test_images_with_no_patient_identity_are_said_to_be_split_by_image(
        tmp_path: Path) -> None:
    for n, label in enumerate(("normal", "benign", "malignant")):
        (tmp_path / label).mkdir()
        cv2.imwrite(str(tmp_path / label / f"x{n}.png"), np.full((80, 64), 40 * n, np.uint8))
    images = load_dataset(tmp_path)
    assert without_patient(images) == 3
    warning = unknown_patients_warning(images, layout_of(tmp_path))
    assert warning is not None and warning.startswith("3 of 3 images have no patient identity")
    # A folder per class has no manifest to add a column to: the advice says how to give
    # patients for this layout.
    assert "Add a patient_id column to the manifest" not in warning
    assert "A folder per class names no patients" in warning
    assert "CSV manifest (path,label,patient_id)" in warning
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nnormal/x0.png,normal\nbenign/x1.png,benign\n"
                        "malignant/x2.png,malignant\n")
    said = unknown_patients_warning(load_dataset(manifest), layout_of(manifest))
    assert said is not None and said.endswith("Add a patient_id column to the manifest.")
    manifest.write_text("path,label,patient_id\nnormal/x0.png,normal,P1\n"
                        "benign/x1.png,benign,P1\nmalignant/x2.png,malignant,P2\n")
    assert unknown_patients_warning(load_dataset(manifest), "csv") is None


def test_the_mias_advice_says_how_its_patients_are_inferred(tmp_path: Path) -> None:
    image = LabelledImage(id="mdb001", path=tmp_path / "mdb001.png", label=Label.NORMAL,
                          patient_id="mdb001")
    warning = unknown_patients_warning([image], "mias")
    assert warning is not None and "manifest" in warning
    assert "inferred from Info.txt's numbering" in warning
    assert "Add a patient_id column to the manifest" not in warning
