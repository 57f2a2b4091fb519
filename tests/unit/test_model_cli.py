"""`mammo train` / `mammo models` argument handling that needs no training."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from producer.cli.main import cli


def _env(tmp_path: Path, model: str) -> dict[str, str]:
    return {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": model}


def test_imagenet_weights_fail_clearly_offline(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--weights", "imagenet"],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == 4
    assert "never downloads" in result.output and "--weights none" in result.output


def test_bad_input_size_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--input-size", "12x12"],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == 2 and "at least 64" in result.output


def test_models_show_reports_integrity(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "show", str(tiny_model_dir)],
                                env=_env(tmp_path, str(tiny_model_dir)))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["name"] == "tiny-test-model" and shown["integrity"].startswith("ok")


def test_bilateral_scores_are_named_or_none(tmp_path: Path) -> None:
    from producer.cli.commands_model import _bilateral_scores

    assert _bilateral_scores("malignant, abnormal") == ("abnormal", "malignant")
    assert _bilateral_scores("abnormal") == ("abnormal",)
    assert _bilateral_scores("both") == ("abnormal", "malignant")
    assert _bilateral_scores("none") == ()
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--bilateral", "benign"],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == 2 and "give abnormal, malignant" in result.output
