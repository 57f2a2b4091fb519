"""A labelled set too small for the patient splits fails at once, as a DatasetError that
says what was found and what is needed, never as sklearn's ValueError mid-training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.splits import patient_folds, require_inner_splits
from producer.cli.exit_codes import ExitCode
from shared.enums import CLASSES
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.cli import invoke_cli


def _balanced(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    return labels, np.array([f"p{i}" for i in range(len(labels))])


def test_too_few_for_early_stopping_splits_names_counts_and_need() -> None:
    labels, patients = _balanced(3)
    folds = patient_folds(labels, patients, n_folds=2, seed=1)
    with pytest.raises(DatasetError) as caught:
        require_inner_splits(labels, patients, folds)
    assert "normal 3 images from 3 patients" in str(caught.value)
    assert "about 14 images" in str(caught.value)


def test_the_stated_need_is_enough() -> None:
    labels, patients = _balanced(14)
    require_inner_splits(labels, patients, patient_folds(labels, patients, n_folds=2, seed=1))


def test_too_few_for_the_outer_folds_is_a_dataset_error() -> None:
    labels, patients = _balanced(1)
    with pytest.raises(DatasetError, match="at least one class needs 3 images"):
        patient_folds(labels, patients, n_folds=3, seed=1)


def test_train_on_a_tiny_set_exits_2_before_training(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label in CLASSES:
        folder = tmp_path / "data" / label.value
        folder.mkdir(parents=True)
        for i in range(3):
            write_png(folder / f"{label.value}{i}.png", synth_mammogram(rng, size=(256, 208)))
    code, out = invoke_cli(["train", str(tmp_path / "data"), "--folds", "2", "--epochs", "1",
                            "--finetune-epochs", "0", "--input-size", "128", "--patch", "32"],
                           monkeypatch, tmp_path)
    assert code == ExitCode.USAGE, out
    assert "Too few labelled images" in out and "Traceback" not in out
