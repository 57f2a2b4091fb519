"""The three data layouts `mammo train` and `mammo evaluate` accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_dataset
from models.mias import laterality_of, patient_of
from shared.enums import Label, Laterality
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png
from tests.conftest import SHARED_DATA

INFO = """MIAS header text that is not a truth row
mdb001 G CIRC B 535 425 197
mdb002 G NORM
mdb003 D CALC M *NOTE 3*
mdb004 F CALC B 100 200 10
mdb004 F CALC M 300 900 20
"""


def _image(path: Path, rows: int = 300) -> None:
    # Seeded by the path: identical files would be one image's copies (one patient group).
    pixels = synth_mammogram(np.random.default_rng(list(str(path).encode())), (rows, 240))
    write_png(path, pixels)


def test_mias_labels_circles_and_patients(tmp_path: Path) -> None:
    for n in range(1, 5):
        _image(tmp_path / f"mdb{n:03d}.png")
    (tmp_path / "Info.txt").write_text(INFO)
    images = {i.id: i for i in load_dataset(tmp_path)}
    assert {k: v.label for k, v in images.items()} == {
        "mdb001": Label.BENIGN, "mdb002": Label.NORMAL, "mdb003": Label.MALIGNANT,
        "mdb004": Label.MALIGNANT}
    # Origin bottom-left: y is counted from the image's last row.
    roi = images["mdb001"].rois[0]
    assert (roi.x, roi.y, roi.radius) == (535.0, 300 - 425, 197.0)
    assert images["mdb003"].rois == ()  # widely distributed calcifications: no circle
    assert [r.severity for r in images["mdb004"].rois] == [Label.BENIGN, Label.MALIGNANT]
    assert images["mdb001"].patient_id == images["mdb002"].patient_id != images["mdb003"].patient_id


def test_mias_pairs_and_sides_follow_the_database_notes() -> None:
    assert patient_of("mdb001") == patient_of("mdb002") == "mias-001"
    assert patient_of("mdb003") == "mias-003"
    assert laterality_of("mdb002") is Laterality.LEFT
    assert laterality_of("mdb001") is Laterality.RIGHT


def test_manifest_with_optional_columns(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label,patient_id,laterality\na.png,Malignant,p1,L\nb.png,normal,,\n")
    a, b = load_dataset(manifest)
    assert (a.label, a.patient_id, a.laterality) == (Label.MALIGNANT, "p1", Laterality.LEFT)
    assert (b.label, b.patient_id, b.laterality) == (Label.NORMAL, "b", None)
    assert a.path == tmp_path / "a.png"


def test_manifest_with_a_bad_label_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\na.png,normal\nb.png,cancer\n")
    with pytest.raises(DatasetError, match=r"line 3.*'cancer'"):
        load_dataset(manifest)


def test_folder_per_class(tmp_path: Path) -> None:
    for rows, label in enumerate(("normal", "malignant"), start=300):
        (tmp_path / label).mkdir()
        _image(tmp_path / label / "x.png", rows)  # two images: one file twice is refused
    (tmp_path / "normal" / "notes.txt").write_text("ignored")
    images = load_dataset(tmp_path)
    assert [(i.id, i.label) for i in images] == [
        ("malignant/x", Label.MALIGNANT), ("normal/x", Label.NORMAL)]


def test_unknown_layout_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="MIAS folder"):
        load_dataset(tmp_path)


def test_real_mini_mias_counts() -> None:
    folder = SHARED_DATA / "mini-mias"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real mammograms are not part of the repository)")
    images = load_dataset(folder)
    counts = {label: sum(i.label is label for i in images) for label in Label}
    assert counts == {Label.NORMAL: 166, Label.BENIGN: 50, Label.MALIGNANT: 42}
    assert len({i.patient_id for i in images}) == 129
