"""`mammo train` refuses degenerate labels, an unusable --output and patches larger than the
input before any training (one line each), not after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.registry import new_model_dir
from models.splits import require_every_class
from producer.cli.exit_codes import ExitCode
from shared.errors import ConfigurationError, DatasetError
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.cli import invoke_cli

TINY = ["--folds", "2", "--epochs", "1", "--finetune-epochs", "0", "--input-size", "128",
        "--patch", "32", "--bootstrap", "10"]


def _folders(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(2)
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(root / label / f"{label}{i}.png", synth_mammogram(rng, size=(160, 128)))
    return root


@pytest.mark.parametrize(("counts", "missing"), [
    ({"normal": 4}, "Add benign and malignant images"),
    ({"normal": 3, "benign": 3}, "Add malignant images"),
    ({"normal": 3, "benign": 3, "malignant": 1}, "Add malignant images"),
])
def test_too_few_patients_of_a_class_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, counts: dict[str, int],
        missing: str) -> None:
    data = _folders(tmp_path / "data", counts)
    code, out = invoke_cli(["train", str(data), "--output", str(tmp_path / "out"), *TINY],
                           monkeypatch, tmp_path)
    assert code == ExitCode.USAGE, out
    assert missing in out and "at least 2 patients" in out
    assert "preprocessed" not in out and "fold 1" not in out  # refused before any work
    assert not (tmp_path / "out").exists()


def test_fewer_patients_than_folds_is_a_warning() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    patients = np.array(["a", "b", "c", "d", "e", "f", "g"])
    assert require_every_class(labels, patients, 2) is None
    said = require_every_class(labels, patients, 3)
    assert said is not None and "benign (2)" in said and "malignant (2)" in said
    with pytest.raises(DatasetError, match="Add malignant images"):
        require_every_class(labels[:-1], patients[:-1], 2)


def test_an_unusable_output_is_refused_before_training(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        new_model_dir(afile, "default", "1.0.0")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        new_model_dir(afile / "deeper", "default", "1.0.0")
    data = _folders(tmp_path / "data", {"normal": 3, "benign": 3, "malignant": 3})
    code, out = invoke_cli(["train", str(data), "--output", str(afile), *TINY],
                           monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG and "is a file, not a folder" in out
    assert "preprocessed" not in out
    assert new_model_dir(tmp_path / "new", "n", "1") == tmp_path / "new" / "n" / "1"
    assert not (tmp_path / "new").exists() and list(tmp_path.glob(".mammo-write-check-*")) == []


def test_an_unwritable_output_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK) and os.geteuid() == 0:
            # root writes anyway: a read-only place root cannot write is /proc.
            with pytest.raises(ConfigurationError, match="cannot write the model under"):
                new_model_dir(Path("/proc/mammo-output"), "default", "1.0.0")
        else:
            with pytest.raises(ConfigurationError, match="cannot write the model under"):
                new_model_dir(locked, "default", "1.0.0")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(("size", "patch"), [("64", "96"), ("128x96", "128")])
def test_a_patch_larger_than_the_input_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, size: str,
                                                        patch: str) -> None:
    code, out = invoke_cli(["train", str(tmp_path), "--input-size", size, "--patch", patch],
                           monkeypatch, tmp_path)
    assert code == ExitCode.USAGE and "--patch" in out and "do not fit" in out


def test_more_folds_than_patients_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _folders(tmp_path / "data", {"normal": 3, "benign": 2, "malignant": 2})
    code, out = invoke_cli(["train", str(data), "--output", str(tmp_path / "out"), *TINY,
                            "--folds", "8"],  # the last --folds counts: 8, of 7 patients
                           monkeypatch, tmp_path)
    assert code == ExitCode.USAGE, out
    assert "8-fold cross-validation needs at least 8 patients, and this data has 7" in out
    assert "give --folds 7 or fewer" in out
    assert "preprocessed" not in out and not (tmp_path / "out").exists()
    labels, patients = np.array([0, 0, 1, 1, 2, 2, 2]), np.array(list("abcdefg"))
    assert require_every_class(labels, patients, 7) is not None  # 7 folds of 7 can run
