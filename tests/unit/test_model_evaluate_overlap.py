"""`mammo evaluate` on a model's own training data says so (stderr and the table), without
adding keys to the stable JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from models.datasets import data_hash, load_dataset
from models.evaluation import training_overlap
from models.registry import resolve_model
from producer.cli.main import cli
from shared.synthetic import synth_mammogram, write_png

CONTRACT = {"n", "accuracy", "confusion_matrix", "auc_abnormal", "auc_malignant",
            "sensitivity_at_90_specificity", "ece", "model", "predictions"}


def _class_folders(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True)
        for n in range(2):
            write_png(root / label / f"{label}{n}.png", synth_mammogram(rng, (200, 160)))
    return root


def _trained_on(tiny_model_dir: Path, target: Path, data: Path) -> Path:
    shutil.copytree(tiny_model_dir, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["training_data"] = {"source": str(data), "sha256": data_hash(load_dataset(data))}
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def test_the_models_own_training_data_is_named(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _class_folders(tmp_path / "data")
    spec = resolve_model(str(_trained_on(tiny_model_dir, tmp_path / "model", data)))
    images = load_dataset(data)
    said = training_overlap(spec, images)
    assert said is not None and "data tiny-test-model 0.0.1 was trained on" in said
    assert training_overlap(spec, images[:-1]) is None  # other data: nothing to say


def test_images_listed_among_the_training_predictions_are_an_overlap(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    data = _class_folders(tmp_path / "data")
    other = _class_folders(tmp_path / "other")
    (other / "normal" / "normal0.png").unlink()
    model = _trained_on(tiny_model_dir, tmp_path / "model", other)
    images = load_dataset(data)
    rows = [{"id": i.id, "truth": i.label.value} for i in images[:2]]
    (model / "validation_predictions.json").write_text(json.dumps(rows))
    said = training_overlap(resolve_model(str(model)), images)
    assert said is not None and said.startswith("2 of 6 images")


def test_evaluate_warns_on_stderr_and_in_the_table_only(tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    data = _class_folders(tmp_path / "data")
    model = _trained_on(tiny_model_dir, tmp_path / "model", data)
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    done = CliRunner().invoke(cli, ["evaluate", str(data), "--model", str(model),
                                    "--format", "json"], env=env)
    assert done.exit_code == 0, done.output
    assert "warning: these 6 images are the data" in done.stderr
    assert set(json.loads(done.stdout)) == CONTRACT
    table = CliRunner().invoke(cli, ["evaluate", str(data), "--model", str(model)], env=env)
    assert table.exit_code == 0, table.output
    assert "warning" in table.stdout and "trained on" in table.stdout
