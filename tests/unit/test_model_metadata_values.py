"""Malformed metadata values are refused with a message naming the value, never a
traceback; `mammo models list` shows a broken registered model as broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import resolve_model
from producer.cli.main import cli
from shared.errors import ModelIntegrityError


def _copy(src: Path, target: Path) -> Path:
    shutil.copytree(src, target)
    return target


def _set(directory: Path, meta: object) -> None:
    (directory / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("key", "value", "said"), [
    ("input_size", "512x512", "input_size must be [HEIGHT, WIDTH]"),
    ("input_size", None, "input_size must be [HEIGHT, WIDTH]"),
    ("input_size", [512, 0], "input_size must be [HEIGHT, WIDTH]"),
    ("input_size", [512, 512, 1], "input_size must be [HEIGHT, WIDTH]"),
    ("sha256", None, "sha256 must be 64 hexadecimal digits"),
    ("version", None, "version must be a non-empty string"),
    ("classes", "normal", "lists classes"),
    ("bilateral", {"scores": ["abnormal"]}, "bilateral must be null or"),
])
def test_a_malformed_value_is_named(tmp_path: Path, tiny_model_dir: Path, key: str,
                                    value: object, said: str) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    meta = json.loads((copy / "metadata.json").read_text())
    meta[key] = value
    _set(copy, meta)
    with pytest.raises(ModelIntegrityError) as refused:
        resolve_model(str(copy))
    assert said in str(refused.value) and str(copy) in str(refused.value)


def test_metadata_that_is_not_an_object_is_refused(tmp_path: Path,
                                                   tiny_model_dir: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    _set(copy, [1, 2])
    with pytest.raises(ModelIntegrityError, match="must hold a JSON object, not a list"):
        resolve_model(str(copy))


def test_models_list_shows_a_corrupted_activated_model_as_broken(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    gone = _copy(tiny_model_dir, tmp_path / "gone")
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    runner = CliRunner()
    meta = json.loads((gone / "metadata.json").read_text())
    meta["version"] = "0.0.2"  # another identity, so both rows are listed
    from models.registry import sealed

    _set(gone, sealed(meta))
    for directory in (gone, copy):
        assert runner.invoke(cli, ["models", "activate", str(directory)], env=env).exit_code == 0
    shutil.rmtree(gone)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["input_size"] = "512x512"
    _set(copy, meta)
    for fmt in ("json", "table"):
        listed = runner.invoke(cli, ["models", "list", "--format", fmt], env=env)
        assert listed.exit_code == 0, listed.output
    rows = {r["path"]: r for r in json.loads(
        runner.invoke(cli, ["models", "list", "--format", "json"], env=env).output)}
    broken = rows[str(copy.resolve())]
    assert broken["active"] and not broken["in_use"]
    assert broken["problem"].startswith("broken:") and "input_size" in broken["problem"]
    assert rows[str(gone.resolve())]["problem"] == "broken: directory missing"
    assert all(r["problem"] is None for r in rows.values() if r["source"] == "shipped")


def test_models_list_never_shows_a_tampered_active_model_in_use(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # Its model.keras swapped for other bytes: every process refuses it at load, yet the
    # listing said in_use True beside "broken: ... sha256".
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"}
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "activate", str(copy)], env=env).exit_code == 0
    with (copy / "model.keras").open("ab") as model_file:
        model_file.write(b"tampered")
    listed = runner.invoke(cli, ["models", "list", "--format", "json"], env=env)
    assert listed.exit_code == 0, listed.output
    row = {r["path"]: r for r in json.loads(listed.output)}[str(copy.resolve())]
    assert row["active"] and row["problem"].startswith("broken:")
    assert not row["in_use"]
