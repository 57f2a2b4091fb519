"""A labelled set too small for the patient splits fails at once, as a DatasetError that
says what was found and what is needed, never as sklearn's ValueError mid-training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.splits import (
    EARLY_STOPPING_FRACTION,
    inner_split_need,
    inner_validation,
    patient_folds,
    require_inner_splits,
)
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
    message = str(caught.value)
    assert "normal 3 images from 3 patients" in message
    # The fold's own numbers: 4 patients in its training part, so 4 parts, and no class
    # has 4 images there.
    assert ("fold 1 trains on normal 2 images from 2 patients, benign 1 images from 1 "
            "patients, malignant 1 images from 1 patients, so it needs 4 images of one "
            "class") in message
    assert ("Add images to one class: 7 of it in each fold's training part always suffice, "
            "which takes about 14 images of that one class in all with 2 folds") in message


def test_the_stated_need_is_enough() -> None:
    labels, patients = _balanced(14)
    require_inner_splits(labels, patients, patient_folds(labels, patients, n_folds=2, seed=1))
    # One class holding the need is enough: the other classes may be tiny.
    labels = np.array([0] * 14 + [1] * 2 + [2] * 2)
    patients = np.array([f"p{i}" for i in range(len(labels))])
    require_inner_splits(labels, patients, patient_folds(labels, patients, n_folds=2, seed=1))


def test_a_mias_sized_set_of_paired_patients_trains() -> None:
    # mini-MIAS mdb001-008, 023, 024, 027, 028: 12 images, two per patient, 7 normal,
    # 3 benign, 2 malignant: few patients per fold, so few parts, and normal fills them.
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 2])
    patients = np.repeat([f"p{i}" for i in range(6)], 2)
    for seed in range(5):
        folds = patient_folds(labels, patients, n_folds=2, seed=seed)
        require_inner_splits(labels, patients, folds)


def test_the_stated_rule_is_the_one_the_split_applies() -> None:
    # Random small training parts: the rule (inner_split_need) refuses exactly those the
    # early-stopping split itself cannot make.
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(400):
        n = int(rng.integers(1, 24))
        labels = rng.integers(0, 3, n)
        patients = rng.integers(0, int(rng.integers(1, n + 1)), n).astype(str)
        try:
            inner_validation(labels, patients, fraction=EARLY_STOPPING_FRACTION, seed=0)
            splits = True
        except DatasetError:
            splits = False
        assert (inner_split_need(labels, patients) is None) == splits, (labels, patients)
        refused += not splits
    assert 40 < refused < 360  # both outcomes were tried


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
