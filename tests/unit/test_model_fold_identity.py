"""Patient folds are a function of the data and the seed: the same in every process (a
model's folds are drawn again by `mammo models merge` and `mammo models bilateral`), with
copies of one image kept together, and ids that carry no folders above the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.datasets import LabelledImage, load_dataset, without_patient
from models.splits import patient_folds
from shared.enums import Label, Laterality, View
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_dicom, write_png
from tests.conftest import SHARED_DATA

# Prints the patient groups and the folds of three seeds of the data set argv[1].
FOLDS = """
import json, sys
import numpy as np
from models.datasets import load_dataset
from models.splits import patient_folds
images = load_dataset(sys.argv[1])
labels = np.array([i.class_index for i in images])
patients = np.array([i.patient_id for i in images])
folds = {seed: [sorted(images[j].id for j in held)
                for _, held in patient_folds(labels, patients, n_folds=3, seed=seed)]
         for seed in (1, 2, 3)}
print(json.dumps({"patients": {i.id: i.patient_id for i in images}, "folds": folds}))
"""


def _dicom_class_folders(root: Path) -> Path:
    """12 patients, both breasts each, one folder per class, named by no patient."""
    n = 0
    for label, patients in (("normal", 4), ("benign", 4), ("malignant", 4)):
        for p in range(patients):
            pid = f"PID-{label}-{p}"
            for laterality in (Laterality.LEFT, Laterality.RIGHT):
                n += 1
                path = root / label / f"im{n:02d}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_dicom(path, synth_mammogram(np.random.default_rng(n), size=(64, 48)),
                            study_uid=f"1.2.9.{n}", sop_uid=f"1.2.9.1.{n}",
                            laterality=laterality, view=View.CC, patient_id=pid)
    return root


def _fresh_process(data: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", FOLDS, str(data)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_dicom_patients_draw_the_same_folds_in_two_fresh_processes(tmp_path: Path) -> None:
    data = _dicom_class_folders(tmp_path / "data")
    first, second = _fresh_process(data), _fresh_process(data)
    assert first["patients"] == second["patients"]
    assert first["folds"] == second["folds"]
    # Grouped by PatientID, named by nothing derived from it.
    groups = first["patients"]
    assert len(set(groups.values())) == 12
    assert groups["normal/im01"] == groups["normal/im02"] != groups["normal/im03"]
    assert not any("PID" in g for g in groups.values())


def _class_folders_with_copies(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True)
        for n in range(6):
            write_png(root / label / f"{label}{n}.png", synth_mammogram(rng, (64, 48)))
    for label in ("normal", "benign", "malignant"):  # an export copied in twice
        for n in range(3):
            (root / label / f"copy_{label}{n}.png").write_bytes(
                (root / label / f"{label}{n}.png").read_bytes())
    return root


def test_copies_of_an_image_are_one_group_and_never_straddle_a_split(tmp_path: Path) -> None:
    images = load_dataset(_class_folders_with_copies(tmp_path / "data"))
    by_id = {i.id: i for i in images}
    original, copy = by_id["benign/benign1"], by_id["benign/copy_benign1"]
    assert copy.patient_id == original.patient_id
    assert copy.copy_of == original.id and original.copy_of is None
    labels = np.array([i.class_index for i in images])
    patients = np.array([i.patient_id for i in images])
    for seed in range(5):
        for _, held in patient_folds(labels, patients, n_folds=3, seed=seed):
            held_ids = {images[j].id for j in held}
            for image in images:
                if image.copy_of is not None:
                    assert (image.id in held_ids) == (image.copy_of in held_ids), seed
    # No patient is known: a copy and its original are still images of no known patient.
    assert without_patient(images) == len(images)


def test_copies_warning_counts_them_once(tmp_path: Path) -> None:
    from models.datasets import copies_warning

    images = load_dataset(_class_folders_with_copies(tmp_path / "data"))
    said = copies_warning(images)
    assert said is not None and said.startswith("9 of 27 images are copies")
    assert copies_warning([i for i in images if i.copy_of is None]) is None


def test_copies_listed_under_two_patients_join_their_patients(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    for n in range(4):
        write_png(tmp_path / f"a{n}.png", synth_mammogram(rng, (64, 48)))
    (tmp_path / "export2_a0.png").write_bytes((tmp_path / "a0.png").read_bytes())
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label,patient_id\na0.png,benign,P1\na1.png,benign,P1\n"
                        "a2.png,normal,P2\na3.png,normal,P3\nexport2_a0.png,benign,E7\n")
    patients = {i.id: i.patient_id for i in load_dataset(manifest)}
    # E7's and P1's images are one group: the copy's patient is the original's.
    assert patients["a0"] == patients["a1"] == patients["export2_a0"]
    assert len({patients["a0"], patients["a2"], patients["a3"]}) == 3


def test_the_layouts_that_name_their_patients_keep_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for n in range(3):
        write_png(tmp_path / f"a{n}.png", synth_mammogram(rng, (64, 48)))
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label,patient_id\na0.png,benign,P1\na1.png,benign,P1\n"
                        "a2.png,normal,\n")
    assert [(i.id, i.patient_id) for i in load_dataset(manifest)] == [
        ("a0", "P1"), ("a1", "P1"), ("a2", "a2")]


@pytest.mark.realdata
def test_the_shipped_models_mini_mias_folds_are_unchanged() -> None:
    """1.8.0 was validated on these folds (mini-MIAS, seed 20261125, 5 folds)."""
    from models.splits import folds_digest

    folder = SHARED_DATA / "mini-mias"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real mammograms are not part of the repository)")
    images = load_dataset(folder)
    folds = patient_folds(np.array([i.class_index for i in images]),
                          np.array([i.patient_id for i in images]), n_folds=5, seed=20261125)
    assert [len(held) for _, held in folds] == [52, 52, 52, 50, 52]
    assert folds_digest(images, folds) == (
        "f67739c92e22ca0a39848d56441eef2f0f1acda8663cc674eaba1003a984f71a")


def test_manifest_ids_of_one_file_name_carry_no_folder_above_the_data(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    export = tmp_path / "pacs" / "export"
    for patient in ("SYN23", "SYN07"):
        (export / patient).mkdir(parents=True)
        write_png(export / patient / "IM0001.png", synth_mammogram(rng, (64, 48)))
    (tmp_path / "lists").mkdir()
    outside = tmp_path / "lists" / "outside.csv"
    outside.write_text(f"path,label\n{export / 'SYN23' / 'IM0001.png'},malignant\n"
                       f"{export / 'SYN07' / 'IM0001.png'},normal\n")
    assert sorted(i.id for i in load_dataset(outside)) == ["SYN07/IM0001", "SYN23/IM0001"]
    inside = tmp_path / "inside.csv"  # absolute paths below the manifest's folder
    inside.write_text(f"path,label\n{export / 'SYN23' / 'IM0001.png'},malignant\n"
                      f"{export / 'SYN07' / 'IM0001.png'},normal\n")
    assert sorted(i.id for i in load_dataset(inside)) == [
        "pacs/export/SYN07/IM0001", "pacs/export/SYN23/IM0001"]
    relative = tmp_path / "relative.csv"  # as before: the path as written
    relative.write_text("path,label\npacs/export/SYN23/IM0001.png,malignant\n"
                        "pacs/export/SYN07/IM0001.png,normal\n")
    assert sorted(i.id for i in load_dataset(relative)) == [
        "pacs/export/SYN07/IM0001", "pacs/export/SYN23/IM0001"]


def _image(image_id: str, patient: str, copy_of: str | None = None) -> LabelledImage:
    return LabelledImage(id=image_id, path=Path(f"{image_id}.png"), label=Label.NORMAL,
                         patient_id=patient, copy_of=copy_of)


def test_drawing_a_models_folds_again_refuses_other_folds() -> None:
    from models.datasets import DICOM_PATIENT
    from models.splits import folds_digest, require_recorded_folds

    images = [_image(f"i{n}", f"p{n // 2}") for n in range(8)]
    labels = np.zeros(8, dtype=np.int64)
    patients = np.array([i.patient_id for i in images])
    folds = patient_folds(labels, patients, n_folds=2, seed=1)
    other = patient_folds(labels, patients, n_folds=2, seed=2)
    meta = {"name": "m", "version": "1.0.0", "training_data": {}}
    require_recorded_folds(meta, images, folds)  # nothing recorded, nothing drawn otherwise
    meta["training_data"]["folds_sha256"] = folds_digest(images, folds)
    require_recorded_folds(meta, images, folds)
    if folds_digest(images, other) != folds_digest(images, folds):
        with pytest.raises(DatasetError, match="recorded folds are not the ones drawn now"):
            require_recorded_folds(meta, images, other)
    # Recorded none, and its patients were grouped by a key drawn afresh in each process
    # (or its copies were not grouped): its folds cannot be drawn again.
    del meta["training_data"]["folds_sha256"]
    dicom = [_image(i.id, DICOM_PATIENT + i.patient_id) for i in images]
    with pytest.raises(DatasetError, match="Train it again"):
        require_recorded_folds(meta, dicom, folds)
    copied = [*images[:-1], _image("i7", "p3", copy_of="i6")]
    with pytest.raises(DatasetError, match="copies of an image"):
        require_recorded_folds(meta, copied, folds)
