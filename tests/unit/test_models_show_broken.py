"""`mammo models show` of a model that workers, `evaluate` and `activate` refuse still prints
what it can, but says the problem first on stderr and exits 5 as they do (before: exit 0,
the problem only in `integrity` at the end of a few hundred lines of JSON)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import MODEL_FILE, sealed, write_model_dir
from producer.cli.main import cli


def _tampered(model: Path) -> None:
    weights = bytearray((model / MODEL_FILE).read_bytes())
    weights[2000] ^= 0xFF
    (model / MODEL_FILE).write_bytes(bytes(weights))


def _edited(model: Path) -> None:  # a sealed setting changed: the seal no longer matches
    meta = json.loads((model / "metadata.json").read_text())
    meta["input_size"] = [256, 256]
    (model / "metadata.json").write_text(json.dumps(meta))


def _other_preprocessing(model: Path) -> None:
    meta = json.loads((model / "metadata.json").read_text())
    meta["preprocessing_version"] = "1"
    (model / "metadata.json").write_text(json.dumps(sealed(meta)))


def _garbage_weights(model: Path) -> None:  # sha256 and seal match a file that is no model
    (model / MODEL_FILE).write_bytes(b"not a keras file" * 10)
    write_model_dir(model, name="garbage", version="0.0.9", input_size=(64, 64),
                    preprocessing_version="2")


@pytest.mark.parametrize(("breakage", "problem"), [
    (_tampered, "the file was changed or corrupted"),
    (_edited, "does not match its seal"),
    (_other_preprocessing, "preprocessing version 1"),
    (_garbage_weights, "is not a Keras .keras file"),
])
def test_a_broken_model_is_shown_with_its_problem_first_and_exit_5(
        tmp_path: Path, tiny_model_dir: Path, breakage: Callable[[Path], None],
        problem: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    breakage(model)
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    shown = CliRunner().invoke(cli, ["models", "show", str(model)], env=env)
    assert shown.exit_code == 5, shown.output
    first = shown.stderr.splitlines()[0]
    assert first.startswith("error: ") and problem in first
    meta = json.loads(shown.stdout)  # still everything it can show
    assert problem in meta["integrity"] and meta["directory"] == str(model)


def test_a_sound_model_is_shown_with_exit_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    shown = CliRunner().invoke(cli, ["models", "show", str(tiny_model_dir)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "error" not in shown.stderr
    assert json.loads(shown.stdout)["integrity"].startswith("ok")
