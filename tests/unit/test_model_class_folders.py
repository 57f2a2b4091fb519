"""A folder per class: any case, images in subfolders too, and a clear word when empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import load_dataset
from shared.enums import Label
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, synth_mammogram(np.random.default_rng(0), (96, 80)))


def test_class_folders_in_any_case_and_their_subfolders_are_read(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "n1.png")
    _png(tmp_path / "Benign" / "b1.png")
    _png(tmp_path / "MALIGNANT" / "patient7" / "left" / "m1.PNG")
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
