"""Security guards that need no services: model integrity, bound SQL, secrets kept out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import resolve_model, sealed, verify_model
from producer.cli.main import cli
from shared.errors import ModelIntegrityError
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.synthetic import make_exam_set


def test_a_tampered_model_file_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    with (copy / "model.keras").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)


def test_a_model_for_other_preprocessing_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["preprocessing_version"] = "0"  # a genuine (sealed) model of another release
    (copy / "metadata.json").write_text(json.dumps(sealed(meta)))
    with pytest.raises(ModelIntegrityError, match="preprocessing version"):
        verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> CliRunner:
    for key in [k for k in os.environ if k.startswith("MAMMO_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAMMO_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("MAMMO_PATIENT_ID_KEY", "s3cret-pseudonym-key-value")
    make_exam_set(tmp_path / "in", n_exams=1, seed=31)
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(tmp_path / "in"), "--format", "json"])
    assert result.exit_code == 0, result.output
    return runner


@pytest.mark.parametrize("hostile", ["x' OR '1'='1", "1; DROP TABLE images; --", "%' --"])
def test_cli_filters_are_bound_parameters(seeded: CliRunner, hostile: str) -> None:
    found = seeded.invoke(cli, ["results", "--study", hostile, "--format", "json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.output) == []
    everything = seeded.invoke(cli, ["results", "--format", "json"])
    assert len(json.loads(everything.output)) == 4  # the table survived


def test_secrets_never_reach_help_or_output(seeded: CliRunner) -> None:
    texts = [seeded.invoke(cli, ["--help"]).output]
    for command in ("run", "submit", "worker", "status", "results", "recover", "watch"):
        texts.append(seeded.invoke(cli, [command, "--help"]).output)
    texts.append(seeded.invoke(cli, ["status", "--health", "--format", "json"]).output)
    texts.append(seeded.invoke(cli, ["results", "--format", "csv"]).output)
    assert all("s3cret-pseudonym-key-value" not in text for text in texts)
