"""metadata.json is sealed like model.keras: a changed head, input size or name is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import (
    SEAL_KEY,
    resolve_model,
    sealed,
    shipped_models,
    verify_model,
)
from producer.cli.main import cli
from shared.errors import ModelIntegrityError
from shared.imaging.preprocess import PREPROCESSING_VERSION


def _copy(src: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(changes)
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def _env(tmp_path: Path, model: str) -> dict[str, str]:
    return {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": model}


def test_a_written_model_is_sealed_and_verifies(tiny_model_spec: object) -> None:
    spec = tiny_model_spec
    assert SEAL_KEY in spec.metadata  # type: ignore[attr-defined]
    verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)  # type: ignore[arg-type]


def test_every_shipped_model_is_sealed_and_verifies() -> None:
    specs = shipped_models()
    assert {s.directory.parent.name for s in specs} == {"default", "alternatives"}
    for spec in specs:
        assert SEAL_KEY in spec.metadata, spec.directory
        verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)


@pytest.mark.parametrize("changes", [
    {"bilateral": {"scores": ["abnormal"], "head": {"abnormal": {"own": 9.0, "partner": 0.0,
                                                                  "bias": 0.0}}}},
    {"input_size": [64, 64]},
    {"version": "9.9.9"},
])
def test_a_tampered_metadata_is_refused_with_exit_5(tmp_path: Path, tiny_model_dir: Path,
                                                     changes: dict[str, object]) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy", **changes)
    spec = resolve_model(str(copy))
    assert spec.sha256 == resolve_model(str(tiny_model_dir)).sha256  # the weights are intact
    with pytest.raises(ModelIntegrityError, match="does not match its seal"):
        verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    shown = CliRunner().invoke(cli, ["models", "show", str(copy)], env=_env(tmp_path, "default"))
    assert shown.exit_code == 5  # shown, and refused as activate refuses it
    assert "does not match its seal" in json.loads(shown.stdout)["integrity"]
    refused = CliRunner().invoke(cli, ["models", "activate", str(copy)],
                                 env=_env(tmp_path, "default"))
    assert refused.exit_code == 5 and "does not match its seal" in refused.output


def test_recording_figures_later_keeps_the_seal(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy", validation={"auc_abnormal": 0.5},
                 reproducibility={"note": "a re-run"}, note="edited free text")
    verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)


def test_an_unsealed_model_is_accepted_with_a_warning(tmp_path: Path,
                                                      tiny_model_dir: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(tiny_model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    del meta[SEAL_KEY]
    (copy / "metadata.json").write_text(json.dumps(meta))
    verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)
    shown = CliRunner().invoke(cli, ["models", "show", str(copy)], env=_env(tmp_path, "default"))
    integrity = json.loads(shown.output)["integrity"]
    assert integrity.startswith("ok") and "not sealed" in integrity
    # Sealing it again (what a training run writes) makes it checked.
    assert SEAL_KEY in sealed(meta) and list(sealed(meta)).index(SEAL_KEY) == (
        list(meta).index("sha256") + 1)


def test_an_unsealed_copy_of_a_shipped_model_must_match_the_shipped_seal(
        tmp_path: Path) -> None:
    shipped = resolve_model("default")
    copy = tmp_path / "copy"
    shutil.copytree(shipped.directory, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    del meta[SEAL_KEY]  # as a copy made before seals, or with the seal stripped
    (copy / "metadata.json").write_text(json.dumps(meta))
    verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)
    meta["bilateral"]["head"]["abnormal"]["partner"] = 0.0
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="does not match its seal"):
        verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)
