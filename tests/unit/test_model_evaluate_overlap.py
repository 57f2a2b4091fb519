"""`mammo evaluate` on a model's own training data says so (stderr and the table), without
adding keys to the stable JSON (issue #4: exactly the keys PRODUCT.md lists)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from models.datasets import data_hash, load_dataset
from models.evaluation import training_overlap
from models.registry import resolve_model
from producer.cli.main import cli
from shared.synthetic import synth_mammogram, write_png

# PRODUCT.md's keys, in its order: exactly these.
PRODUCT_KEYS = ("n", "accuracy", "confusion_matrix", "auc_abnormal", "auc_malignant",
                "sensitivity_at_90_specificity", "ece", "model", "predictions")
CONTRACT = set(PRODUCT_KEYS)


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
    assert list(json.loads(done.stdout)) == list(PRODUCT_KEYS)
    other, rng = tmp_path / "other", np.random.default_rng(99)  # images it never saw
    for label in ("normal", "benign", "malignant"):
        (other / label).mkdir(parents=True)
        write_png(other / label / "new.png", synth_mammogram(rng, (200, 160)))
    clean = CliRunner().invoke(cli, ["evaluate", str(other), "--model", str(model),
                                     "--format", "json"], env=env)
    assert clean.exit_code == 0, clean.output
    assert "trained on" not in clean.stderr and "training images" not in clean.stderr
    table = CliRunner().invoke(cli, ["evaluate", str(data), "--model", str(model)], env=env)
    assert table.exit_code == 0, table.output
    assert "warning" in table.stdout and "trained on" in table.stdout


def _eight_bit_pgms(root: Path) -> Path:
    """A folder per class of 8-bit PGMs (the mini-MIAS format)."""
    rng = np.random.default_rng(11)
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True)
        for n in range(2):
            pixels = (synth_mammogram(rng, (120, 96)) >> 4).astype(np.uint8)
            assert cv2.imwrite(str(root / label / f"{label}{n}.pgm"), pixels)
    return root


def _trained_with_predictions(tiny_model_dir: Path, target: Path, data: Path) -> Path:
    """A model whose validation predictions a training run on ``data`` wrote."""
    from models.prepared import prepare
    from models.train_run import _write_validation_predictions

    model = _trained_on(tiny_model_dir, target, data)
    prepared = prepare(load_dataset(data), (64, 48), max_pixels=10**8)
    probs = np.full((len(prepared.images), 3), 1 / 3)
    _write_validation_predictions(model, prepared, probs)
    return model


def test_training_images_are_known_by_their_content_whatever_their_name_and_format(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    trained = _eight_bit_pgms(tmp_path / "trained")
    model = _trained_with_predictions(tiny_model_dir, tmp_path / "model", trained)
    # The same pixels saved again as 16-bit PNGs under other names, in a manifest, beside
    # two new images; and one PGM copied as it is.
    site = tmp_path / "site"
    site.mkdir()
    rows = ["path,label"]
    for n, pgm in enumerate(sorted(trained.glob("*/*.pgm"))[:3]):
        write_png(site / f"case{n}.png", cv2.imread(str(pgm), cv2.IMREAD_UNCHANGED))
        rows.append(f"case{n}.png,{pgm.parent.name}")
    shutil.copy(trained / "benign" / "benign1.pgm", site / "exam.pgm")
    rows.append("exam.pgm,benign")
    rng = np.random.default_rng(12)
    for n in range(2):
        write_png(site / f"new{n}.png", synth_mammogram(rng, (120, 96)))
        rows.append(f"new{n}.png,normal")
    (site / "set.csv").write_text("\n".join(rows) + "\n")
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": "default"}
    done = CliRunner().invoke(cli, ["evaluate", str(site / "set.csv"), "--model", str(model),
                                    "--format", "json"], env=env)
    assert done.exit_code == 0, done.output
    assert ("warning: 4 of 6 images have the content of one of tiny-test-model 0.0.1's "
            "training images (validation_predictions.json)") in done.stderr
    # With content digests recorded, a name alone is no evidence: other pixels under a
    # training image's name and label are new images.
    (site / "benign0.png").write_bytes((site / "new0.png").read_bytes())
    (site / "names.csv").write_text("path,label\nbenign0.png,benign\nnew1.png,normal\n")
    spec = resolve_model(str(model))
    assert training_overlap(spec, load_dataset(site / "names.csv")) is None


def test_models_without_digests_know_their_images_by_file_name_and_label(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The shipped models recorded ids only: ``mdb001`` (a MIAS folder) is
    ``benign/mdb001`` in a class folder, or a manifest's ``mdb001`` in another folder."""
    data = _class_folders(tmp_path / "data")
    other = _class_folders(tmp_path / "other")
    (other / "normal" / "normal0.png").unlink()
    model = _trained_on(tiny_model_dir, tmp_path / "model", other)
    rows = [{"id": "NORMAL0", "truth": "normal"}, {"id": "x/benign1", "truth": "benign"},
            {"id": "malignant1", "truth": "benign"},  # the same name, another label
            # A name several training images had (IM0001 in each patient's folder) tells
            # nothing.
            {"id": "a/malignant0", "truth": "malignant"},
            {"id": "b/malignant0", "truth": "malignant"}]
    (model / "validation_predictions.json").write_text(json.dumps(rows))
    said = training_overlap(resolve_model(str(model)), load_dataset(data))
    assert said == ("2 of 6 images have the id or file name and label of one of "
                    "tiny-test-model 0.0.1's training images (validation_predictions.json): "
                    "figures on them are not held-out figures")


def test_the_help_example_does_not_score_the_shipped_model_on_its_training_data() -> None:
    shown = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert shown.exit_code == 0
    example = shown.output.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.startswith("mammo evaluate ") and "mini-mias" not in example
    assert "on stderr" in " ".join(shown.output.split())
