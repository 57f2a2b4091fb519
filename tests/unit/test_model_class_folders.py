"""A folder per class: any case, images in subfolders too, and a clear word when empty, when
a folder is not a class, or when one image is filed under two classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_dataset
from shared.enums import Label
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png


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
