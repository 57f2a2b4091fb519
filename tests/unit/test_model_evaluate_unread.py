"""`mammo evaluate` with images it cannot read still prints the figures of the others, then
names the unread ones on a last stderr line and exits 3 (some images failed), as `run` does."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import synth_mammogram, write_png
from tests.helpers.cli import run_cli
from tests.unit.test_model_evaluate_overlap import CONTRACT, _class_folders


def _with_unreadable(root: Path) -> Path:
    _class_folders(root)
    truncated = root / "benign" / "benign1.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "malignant" / "malignant1.png").write_text("not an image", encoding="utf-8")
    return root


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_unread_images_exit_3_after_the_figures_of_the_others(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path,
        fmt: str) -> None:
    data = _with_unreadable(tmp_path / "data")
    done = run_cli(["evaluate", str(data), "--model", str(tiny_model_dir), "--format", fmt],
                   monkeypatch, tmp_path)
    assert done.exit_code == ExitCode.IMAGES_FAILED, done.output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("2 of 6 images could not be read and are not in these metrics: ")
    assert "benign1.png" in last and "malignant1.png" in last
    # The other warnings count the images the figures are of.
    assert "4 of 4 images have no patient identity" in done.stderr
    read = {"normal/normal0", "normal/normal1", "benign/benign0", "malignant/malignant0"}
    if fmt == "json":
        result = json.loads(done.stdout)
        assert set(result) == CONTRACT and result["n"] == 4
        assert {p["id"] for p in result["predictions"]} == read
    elif fmt == "csv":  # stdout is the predictions alone; the figures are on stderr
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        assert {r["id"] for r in rows} == read
        assert list(rows[0]) == ["id", "truth", "label", "p_normal", "p_benign", "p_malignant"]
        assert all(sum(float(r[f"p_{c}"]) for c in ("normal", "benign", "malignant"))
                   == pytest.approx(1.0, abs=1e-3) for r in rows)
        assert {r["truth"] for r in rows} == {"normal", "benign", "malignant"}
        assert ": n 4, accuracy " in done.stderr and "auc_abnormal " in done.stderr
    else:
        assert "Confusion matrix" in done.stdout


def test_a_mias_folder_with_a_byte_order_mark_is_evaluated_whole(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "mb"
    data.mkdir()
    rng = np.random.default_rng(6)
    for n in range(1, 5):
        write_png(data / f"mdb{n:03d}.png", synth_mammogram(rng, (200, 160)))
    (data / "Info.txt").write_bytes(b"\xef\xbb\xbfmdb001 G NORM\r\nmdb002 G NORM\r\n"
                                    b"mdb003 G CIRC B 100 100 20\r\nmdb004 G CIRC M 100 100 20\r\n")
    done = run_cli(["evaluate", str(data), "--model", str(tiny_model_dir), "--format", "json"],
                   monkeypatch, tmp_path)
    assert done.exit_code == ExitCode.OK, done.output
    assert json.loads(done.stdout)["n"] == 4
