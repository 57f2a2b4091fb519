"""A model.keras that cannot load, or cannot take the metadata's input, is a model error
(exit 5, one line) at activation and at load, never a traceback mid-run."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import resolve_model, sealed, verify_model
from producer.cli.main import cli
from shared.errors import ModelIntegrityError
from shared.filehash import file_sha256
from shared.imaging.preprocess import PREPROCESSING_VERSION
from worker.classifier import Classifier


def _copy(src: Path, target: Path, **changes: object) -> Path:
    """A copy whose metadata is changed AND re-sealed with the file's sha256 (as a genuine
    but broken model would be), so only the load check can catch it."""
    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(changes)
    meta["sha256"] = file_sha256(target / "model.keras")
    (target / "metadata.json").write_text(json.dumps(sealed(meta)))
    return target


def _reseal(directory: Path) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    meta["sha256"] = file_sha256(directory / "model.keras")
    (directory / "metadata.json").write_text(json.dumps(sealed(meta)))


def _activate(tmp_path: Path, directory: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", "activate", str(directory)], env={
        "MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"})
    return result.exit_code, result.output


def test_a_model_file_that_is_not_a_keras_zip_is_refused_at_activation(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = _copy(tiny_model_dir, tmp_path / "broken")
    (broken / "model.keras").write_bytes(b"not a zip at all")
    _reseal(broken)
    with pytest.raises(ModelIntegrityError, match=r"not a Keras \.keras file"):
        verify_model(resolve_model(str(broken)), preprocessing_version=PREPROCESSING_VERSION)
    code, out = _activate(tmp_path, broken)
    assert code == 5 and "not a Keras .keras file" in out and "Traceback" not in out


def test_an_input_size_other_than_the_models_is_refused_at_activation(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    wrong = _copy(tiny_model_dir, tmp_path / "wrong", input_size=[64, 64])
    code, out = _activate(tmp_path, wrong)
    assert code == 5 and "takes 96x80 images" in out and "input_size 64x64" in out


def _destroyed_weights(src: Path, target: Path, **changes: object) -> Path:
    """A copy of ``src`` whose model.keras is a real zip with its config intact but its
    weights truncated, re-sealed: the checks without TensorFlow pass, Keras fails."""
    broken = _copy(src, target, **changes)
    with zipfile.ZipFile(src / "model.keras") as old, \
            zipfile.ZipFile(broken / "model.keras", "w") as new:
        for item in old.namelist():
            data = old.read(item)
            new.writestr(item, data[: len(data) // 3] if item.endswith(".h5") else data)
    _reseal(broken)
    return broken


def test_classifier_load_turns_a_keras_failure_into_a_model_error(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = _destroyed_weights(tiny_model_dir, tmp_path / "broken")
    spec = resolve_model(str(broken))
    verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    classifier = Classifier(spec, batch_size=2, preprocessing_version=PREPROCESSING_VERSION)
    with pytest.raises(ModelIntegrityError, match="cannot be loaded by Keras") as refused:
        classifier.load()
    assert "\n" not in str(refused.value)


def test_classifier_load_refuses_an_input_shape_other_than_the_metadata(
        tiny_model_spec: object) -> None:
    import dataclasses

    import keras

    from worker.classifier import _require_input

    model = keras.models.load_model(tiny_model_spec.model_path, compile=False)  # type: ignore[attr-defined]
    _require_input(model, tiny_model_spec)  # type: ignore[arg-type]
    other = dataclasses.replace(tiny_model_spec, input_size=(256, 256))  # type: ignore[type-var]
    with pytest.raises(ModelIntegrityError, match="takes 96x80x1 images"):
        _require_input(model, other)


def _models(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["models", *args], env={
        "MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": None})
    return result.exit_code, result.output


def test_weights_keras_cannot_load_are_refused_at_activation(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # Activated, they would stop every worker at its next start.
    good = _copy(tiny_model_dir, tmp_path / "good")
    assert _models(tmp_path, "activate", str(good))[0] == 0
    # Another version: other weights under good's name and version are refused before
    # any loading (test_model_cli), and this is about the load.
    broken = _destroyed_weights(tiny_model_dir, tmp_path / "broken", version="0.0.2")
    code, out = _models(tmp_path, "activate", str(broken))
    assert code == 5, out
    assert "cannot be loaded by Keras" in out and "Traceback" not in out
    code, out = _models(tmp_path, "list", "--format", "json")
    active = [row["path"] for row in json.loads(out) if row["active"]]
    assert active == [str(good.resolve())]  # the earlier activation stands


def test_models_list_shows_an_activated_model_whose_file_changed(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    assert _models(tmp_path, "activate", str(copy))[0] == 0
    with (copy / "model.keras").open("ab") as fh:
        fh.write(b"changed after activation")
    code, out = _models(tmp_path, "list", "--format", "json")
    assert code == 0, out
    [row] = [r for r in json.loads(out) if r["path"] == str(copy.resolve())]
    assert row["active"] and row["problem"].startswith("broken: ")
    assert "the file was changed or corrupted" in row["problem"]
    shipped = [r for r in json.loads(out) if r["source"] == "shipped"]
    assert shipped and all(r["problem"] is None for r in shipped)
