"""A folder per class: any case, images in subfolders too, images known by their content
whatever their name, and a clear word when empty, when a folder is not a class, when one image
is filed under two classes, or when a file would be left out (no image this reads, an image
beside the class folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_dataset
from shared.enums import Label, Laterality, View
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_dicom, write_png


def _png(path: Path, seed: int = 0) -> None:
    """A synthetic mammogram; the same ``seed`` writes the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, synth_mammogram(np.random.default_rng(seed), (96, 80)))


def test_class_folders_in_any_case_and_their_subfolders_are_read(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _png(tmp_path / "Benign" / "b1.png", seed=2)
    _png(tmp_path / "MALIGNANT" / "patient7" / "left" / "m1.PNG", seed=3)
    images = {i.id: i.label for i in load_dataset(tmp_path)}
    assert images == {"normal/n1": Label.NORMAL, "benign/b1": Label.BENIGN,
                      "malignant/patient7/left/m1": Label.MALIGNANT}


def test_same_stem_in_two_subfolders_are_two_images(tmp_path: Path) -> None:
    _png(tmp_path / "benign" / "a" / "img.png")
    _png(tmp_path / "benign" / "b" / "img.png")
    assert [i.id for i in load_dataset(tmp_path)] == ["benign/a/img", "benign/b/img"]


def test_class_folders_without_images_say_what_they_hold(tmp_path: Path) -> None:
    (tmp_path / "normal").mkdir()
    (tmp_path / "Benign" / "sub").mkdir(parents=True)
    (tmp_path / "Benign" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as refused:
        load_dataset(tmp_path)
    message = str(refused.value)
    assert "Benign/, normal/" in message and "hold no images" in message
    assert "1 other files (for example Benign/sub/notes.txt)" in message


def test_one_image_under_two_classes_is_refused_naming_both(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png")
    _png(tmp_path / "malignant" / "sub" / "copy.png")  # the same pixels, the same bytes
    _png(tmp_path / "benign" / "b1.png", seed=1)
    with pytest.raises(DatasetError) as refused:
        load_dataset(tmp_path)
    message = str(refused.value)
    assert "malignant/sub/copy.png and normal/n1.png are the same image" in message
    assert "malignant and normal" in message


def test_a_folder_that_is_no_class_is_refused_naming_the_classes(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _png(tmp_path / "benign" / "b1.png", seed=2)
    _png(tmp_path / "malignat" / "m1.png", seed=3)
    (tmp_path / ".cache").mkdir()  # hidden folders are not data
    with pytest.raises(DatasetError) as refused:
        load_dataset(tmp_path)
    message = str(refused.value)
    assert f"{tmp_path / 'malignat'}/ is not a class folder" in message
    assert "normal/, benign/, malignant/" in message


def _dicom(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, synth_mammogram(np.random.default_rng(n), (96, 80)),
                study_uid=f"1.2.7.{n}", sop_uid=f"1.2.7.1.{n}", laterality=Laterality.LEFT,
                view=View.CC, patient_id=f"PID-{n}")


def test_images_named_without_an_image_suffix_are_read_by_their_content(
        tmp_path: Path) -> None:
    # A PACS export names its DICOMs IM0001, or by their UID (whose last part looks like a
    # suffix); the readers know a file by its first bytes, so the data set does too.
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _dicom(tmp_path / "benign" / "IM0001", 2)
    _dicom(tmp_path / "benign" / "1.2.840.5", 3)
    _png(tmp_path / "malignant" / "SCAN7.png", seed=4)
    (tmp_path / "malignant" / "SCAN7.png").rename(tmp_path / "malignant" / "SCAN7")
    images = {i.id: i for i in load_dataset(tmp_path)}
    assert sorted(images) == ["benign/1.2.840.5", "benign/IM0001", "malignant/SCAN7",
                              "normal/n1"]
    assert images["benign/IM0001"].view == "CC"  # its header was read as a DICOM's


def test_notes_and_hidden_files_are_passed_over(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _png(tmp_path / "benign" / "b1.png", seed=2)
    (tmp_path / "benign" / "._b1.png").write_bytes(b"\0\5\26\7AppleDouble")  # a Mac's zip
    (tmp_path / "benign" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "benign" / ".cache").mkdir()
    (tmp_path / "benign" / ".cache" / "b1.png").write_bytes(b"a hidden folder is no data")
    (tmp_path / "normal" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "normal" / "notes.txt").write_text("reviewed by Dr X")
    assert [i.id for i in load_dataset(tmp_path)] == ["benign/b1", "normal/n1"]


def test_a_file_in_a_class_folder_that_is_no_image_is_refused_by_name(
        tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _png(tmp_path / "benign" / "b1.png", seed=2)
    (tmp_path / "benign" / "IM0002").write_bytes(b"\x01\x02 not any image format")
    (tmp_path / "benign" / "old").mkdir()
    (tmp_path / "benign" / "old" / "b2.bmp").write_bytes(b"BM\0\0")
    with pytest.raises(DatasetError) as refused:
        load_dataset(tmp_path)
    said = str(refused.value)
    assert "2 file(s) in the class folders are not images this reads" in said
    assert "(benign/IM0002, benign/old/b2.bmp)" in said and "never in part" in said


def test_an_image_beside_the_class_folders_is_refused_by_name(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png", seed=1)
    _png(tmp_path / "benign" / "b1.png", seed=2)
    _png(tmp_path / "unsorted.png", seed=3)
    _dicom(tmp_path / "IM0009", 4)
    (tmp_path / "labels.md").write_text("how the classes were decided")  # no image: allowed
    (tmp_path / "._unsorted.png").write_bytes(b"\0\5\26\7")  # hidden: not data
    with pytest.raises(DatasetError) as refused:
        load_dataset(tmp_path)
    said = str(refused.value)
    assert "2 image(s) in" in said and "lie beside the class folders" in said
    assert "(IM0009, unsorted.png)" in said and "labels are unknown" in said
