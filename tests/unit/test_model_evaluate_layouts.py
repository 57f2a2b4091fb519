"""`mammo evaluate` and `mammo train` on data laid out as people receive it: a MIAS folder
whose truth table a Windows share or FAT stick wrote as INFO.TXT, with its images in a
subfolder (Kaggle's all-mias/), is evaluated whole; a manifest Excel saved as Windows-1252 is
refused with what to do (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.cli import run_cli
from tests.unit.test_model_evaluate_overlap import CONTRACT


def test_a_kaggle_mias_folder_with_an_upper_case_info_txt_is_evaluated_whole(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "withheld"
    (data / "all-mias").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for n in range(1, 5):
        write_png(data / "all-mias" / f"mdb{n:03d}.png", synth_mammogram(rng, (200, 160)))
    (data / "INFO.TXT").write_text("mdb001 G NORM\nmdb002 G NORM\nmdb003 G CIRC B 100 100 20\n"
                                   "mdb004 G CIRC M 100 100 20\n", encoding="ascii")
    done = run_cli(["evaluate", str(data), "--model", str(tiny_model_dir), "--format", "json"],
                   monkeypatch, tmp_path)
    assert done.exit_code == ExitCode.OK, done.output
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT and result["n"] == 4
    assert {p["id"]: p["truth"] for p in result["predictions"]} == {
        "mdb001": "normal", "mdb002": "normal", "mdb003": "benign", "mdb004": "malignant"}


@pytest.mark.parametrize("command", [["evaluate"], ["train", "--output", "models-out"]])
def test_a_manifest_saved_as_windows_1252_exits_2_saying_how_to_save_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path,
        command: list[str]) -> None:
    for name in ("a.png", "b.png"):
        write_png(tmp_path / name, synth_mammogram(np.random.default_rng(1), (96, 80)))
    manifest = tmp_path / "set.csv"
    manifest.write_bytes("path,label,patient_id\na.png,normal,Müller\nb.png,benign,Müller\n"
                         .encode("cp1252"))
    done = run_cli([command[0], str(manifest), *command[1:]], monkeypatch, tmp_path,
                   model=str(tiny_model_dir))
    assert done.exit_code == ExitCode.USAGE, done.output
    assert "is not UTF-8 text" in done.output and "save it as UTF-8" in done.output
    assert "Traceback" not in done.output
