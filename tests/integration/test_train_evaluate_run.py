"""Train -> evaluate -> activate -> run, through the real CLI, on a tiny synthetic set.

A real (tiny) training run: 2 folds, 2 epochs, 128 px input, narrow trunks (widths are not
what is tested here; the shipped ones cost CPU in every training), seconds. Not a quality test:
it proves the model `mammo train` writes is the one `mammo evaluate` scores and, once
activated, the one `mammo run` uses (with a heatmap stored per prediction).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select

from models.bilateral import bilateral_head
from models.heatmaps import decode_png
from models.registry import resolve_model
from shared.db.schema import ModelVersion, Prediction
from shared.synthetic import make_exam_set
from tests.conftest import SHARED_DATA
from tests.helpers.mias_like import write_mias_like
from tests.helpers.processes import mammo_env, run_mammo

EVALUATE_KEYS = ["n", "accuracy", "confusion_matrix", "auc_abnormal", "auc_malignant",
                 "sensitivity_at_90_specificity", "ece", "model", "predictions"]
# A training run took 158 s beside three busy processes (as under `-n 3` on 2 cores): 66 %
# of run_mammo's 240 s, and with the test its module fixture is set up for, 59 % of the
# suite's 300 s. Room for a busier host; a hung run still ends.
TRAIN_TIMEOUT_S = 480
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    data = write_mias_like(root / "mias", pairs=6)
    env = mammo_env(database_url=f"sqlite:///{root / 'train.db'}")
    done = run_mammo(["train", str(data), "--output", str(root / "out"), "--name", "tiny",
                      "--version", "0.1.0", "--folds", "2", "--members", "2",
                      "--local-contrast", "24", "--bilateral", "abnormal,malignant",
                      "--epochs", "2", "--finetune-epochs", "1", "--finetune-locations", "1",
                      "--average-from", "1", "--negatives-ratio", "3", "--hard-negatives", "4",
                      "--input-size", "128", "--patch", "32", "--stage-convs", "2",
                      "--widths", "8,16,16,16,16", "--bootstrap", "20"], env, root,
                     timeout=TRAIN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "fold 2/2" in done.stderr and "epoch 1/2" in done.stderr  # progress is printed
    assert "whole-image epoch 1/1" in done.stderr
    assert "weights of epochs 1-2 averaged" in done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def test_train_writes_a_sealed_model_with_plots_and_card(trained: Path) -> None:
    spec = resolve_model(str(trained))
    meta = spec.metadata
    assert (spec.name, spec.version, spec.input_size) == ("tiny", "0.1.0", (128, 128))
    for plot in meta["plots"].values():
        assert (trained / plot).stat().st_size > 1000
    assert meta["training_data"]["images"] == 12 and meta["training_data"]["patients"] == 6
    # 2 folds x 2 seeded trunks each, all behind the local-contrast layer they trained with.
    assert meta["ensemble_members"] == 4 and len(meta["training"]["best_epochs"]) == 4
    assert meta["training"]["stage_convs"] == 2
    assert meta["training"]["local_contrast_sigma"] == 24.0
    assert meta["training"]["finetune_epochs"] == 1
    assert meta["training"]["finetune_location_weight"] == 1.0
    assert [len(losses) for losses in meta["training"]["finetune_losses"]] == [1, 1, 1, 1]
    assert meta["training"]["average_from"] == 1
    assert (meta["training"]["negatives_ratio"], meta["training"]["hard_negatives"]) == (3.0, 4)
    import keras

    import models.layers  # noqa: F401  (registers the custom layers)

    model = keras.models.load_model(trained / "model.keras", compile=False, safe_mode=True)
    assert [layer.sigma for layer in model.layers if type(layer).__name__ == "LocalContrast"] \
        == [24.0]
    assert set(meta["validation"]) >= {"auc_abnormal", "auc_malignant", "ece", "ci95"}
    card = (trained / "MODEL_CARD.md").read_text()
    assert "Suckling" in card and "Decision support" in card and "95%" in card
    assert ("fine-tuned for 1 epoch on the whole training images of their fold with image "
            "labels and, at weight 1, every map location's label") in card
    assert "mean of its weights from patch epoch 1 to its early stop" in card
    assert "3 normal patches per lesion patch, 4 hard negatives mined per training image" in card
    # Both scores read against the other breast, validated with heads fitted on other folds.
    bilateral = meta["bilateral"]
    assert bilateral["scores"] == ["abnormal", "malignant"] and bilateral["images_paired"] == 12
    assert set(bilateral["head"]) == {"abnormal", "malignant"}
    assert set(bilateral["validation"]) >= {"auc_abnormal", "auc_malignant", "ece", "ci95"}
    assert "CNN, read with the other breast" in card and "Bilateral reading" in card


def test_ablation_measures_the_other_test_time_flips(trained: Path) -> None:
    meta = resolve_model(str(trained)).metadata
    assert meta["tta_flips"] == [[]]  # shipped: the image once
    rows = {(r["flips"], r["head"]) for r in meta["ablation"]}
    assert {flips for flips, _ in rows} == {"none", "image + left-right"}
    assert len(rows) == 2 * len({head for _, head in rows})


def test_models_compare_records_a_rerun_in_the_card(trained: Path, tmp_path: Path) -> None:
    ref, rerun = tmp_path / "ref", tmp_path / "rerun"
    shutil.copytree(trained, ref)
    shutil.copytree(trained, rerun)
    meta = json.loads((rerun / "metadata.json").read_text())
    meta["validation"]["auc_abnormal"] = (meta["validation"]["auc_abnormal"] or 0.5) + 0.01
    (rerun / "metadata.json").write_text(json.dumps(meta))
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'c.db'}")
    done = run_mammo(["models", "compare", str(ref), str(rerun), "--format", "json",
                      "--record"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    [row] = [r for r in result["rows"] if r["metric"] == "AUC abnormal"]
    assert row["difference"] == pytest.approx(0.01)
    recorded = resolve_model(str(ref)).metadata["reproducibility"]
    assert recorded["rows"] == result["rows"]
    assert "Same-seed re-run" in (ref / "MODEL_CARD.md").read_text()
    meta["seed"] += 1
    (rerun / "metadata.json").write_text(json.dumps(meta))
    refused = run_mammo(["models", "compare", str(ref), str(rerun)], env, tmp_path)
    assert refused.returncode == 2 and "seeds differ" in refused.stderr


def test_repeat_cv_reruns_the_recipe_on_another_split(trained: Path, tmp_path: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    shutil.copytree(trained, ref)
    data = trained.parents[2] / "mias"  # what the fixture trained on
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'r.db'}")
    # A record already holding another split (a `mammo train --seed 99` run): --record must
    # add the re-run to it, not replace it. One re-training is the whole cost of this test;
    # how records grow split by split is unit-tested (test_model_repeated_splits).
    shutil.copytree(trained, run)
    earlier = json.loads((run / "metadata.json").read_text())
    earlier["seed"] = earlier["training"]["seed"] = 99
    (run / "metadata.json").write_text(json.dumps(earlier))
    seeded = run_mammo(["models", "record-splits", str(ref), str(run)], env, tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    done = run_mammo(["models", "repeat-cv", str(ref), str(data), "--seeds", "5",
                      "--format", "json", "--record"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "split 1/1: seed 5" in done.stderr and "fold 2/2" in done.stderr
    result = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    own, other = result["rows"]
    meta = resolve_model(str(ref)).metadata
    assert (own["seed"], own["source"], own["auc_abnormal"]) == (
        meta["seed"], "this model", meta["validation"]["auc_abnormal"])
    assert (other["seed"], other["source"]) == (5, "re-run")
    assert 0.0 <= other["ece"] <= 1.0 and 0.0 <= other["baseline_auc_abnormal"] <= 1.0
    assert 0.0 <= other["bilateral_auc_abnormal"] <= 1.0  # the recipe reads both breasts
    assert own["bilateral_auc_abnormal"] == meta["bilateral"]["validation"]["auc_abnormal"]
    values = [r["ece"] for r in result["rows"]]
    assert result["spread"]["ece"]["mean"] == pytest.approx(sum(values) / 2)
    grown = meta["repeated_splits"]
    assert [(r["seed"], r["source"]) for r in grown["rows"]] == [
        (meta["seed"], "this model"), (99, "training run"), (5, "re-run")]
    assert grown["rows"][2]["auc_abnormal"] == other["auc_abnormal"]
    assert grown["spread"]["ece"]["mean"] == pytest.approx(
        sum(r["ece"] for r in grown["rows"]) / 3)
    assert "on 3 different" in (ref / "MODEL_CARD.md").read_text()
    # The recipe's own seed, and data it never trained on, are refused with a reason.
    own_seed = run_mammo(["models", "repeat-cv", str(ref), str(data), "--seeds",
                          str(meta["seed"])], env, tmp_path)
    assert own_seed.returncode == 2 and "the model's own split" in own_seed.stderr
    other_data = write_mias_like(tmp_path / "other", pairs=3, seed=11)
    refused = run_mammo(["models", "repeat-cv", str(ref), str(other_data), "--seeds", "5"],
                        env, tmp_path)
    assert refused.returncode == 2 and "not the data this model trained on" in refused.stderr


def test_record_splits_adds_separately_trained_runs_of_the_recipe(trained: Path,
                                                                  tmp_path: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    shutil.copytree(trained, ref)
    shutil.copytree(trained, run)
    meta = json.loads((run / "metadata.json").read_text())
    meta["seed"] = meta["training"]["seed"] = 99  # as `mammo train --seed 99` records it
    meta["validation"]["auc_abnormal"] = 0.25
    (run / "metadata.json").write_text(json.dumps(meta))
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 's.db'}")
    done = run_mammo(["models", "record-splits", str(ref), str(run)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    record = resolve_model(str(ref)).metadata["repeated_splits"]
    assert [(r["seed"], r["source"]) for r in record["rows"]] == [
        (resolve_model(str(trained)).metadata["seed"], "this model"), (99, "training run")]
    assert record["rows"][1]["auc_abnormal"] == 0.25
    assert "| 99 | training run, " in (ref / "MODEL_CARD.md").read_text()
    # Another recipe is not a split of this one: refused with the difference named.
    meta["seed"] = meta["training"]["seed"] = 98
    meta["training"]["epochs"] += 1
    (run / "metadata.json").write_text(json.dumps(meta))
    refused = run_mammo(["models", "record-splits", str(ref), str(run)], env, tmp_path)
    assert refused.returncode == 2 and "differs from this model in epochs" in refused.stderr


def test_models_bilateral_gives_an_older_model_the_head_its_training_would_have_fitted(
        trained: Path, tmp_path: Path) -> None:
    older = tmp_path / "older" / "tiny" / "0.1.0"
    shutil.copytree(trained, older)
    meta = json.loads((older / "metadata.json").read_text())
    own = meta.pop("bilateral")  # as a model trained before bilateral heads records it
    (older / "metadata.json").write_text(json.dumps(meta))
    data = trained.parents[2] / "mias"
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'b.db'}")
    args = ["models", "bilateral", str(older), str(data), "--version", "0.2.0",
            "--output", str(tmp_path / "out"), "--scores", "abnormal,malignant"]
    done = run_mammo(args, env, tmp_path)
    assert done.returncode == 0, done.stderr
    derived = resolve_model(done.stdout.strip().splitlines()[-1])
    assert (derived.version, derived.sha256) == ("0.2.0", meta["sha256"])
    # Same held-out predictions, same folds: the head the training run itself fitted
    # (up to the 4 decimals the predictions file keeps).
    for score in ("abnormal", "malignant"):
        assert derived.metadata["bilateral"]["head"][score] == pytest.approx(
            own["head"][score], abs=0.02)
    assert derived.metadata["bilateral"]["validation"]["auc_abnormal"] == pytest.approx(
        own["validation"]["auc_abnormal"], abs=0.02)
    assert derived.metadata["derived_from"]["version"] == "0.1.0"
    assert "version 0.1.0's `model.keras`" in (derived.directory / "MODEL_CARD.md").read_text()
    # Refused, with a reason: again (the version exists), a model that already has a head,
    # and data the model did not train on.
    again = run_mammo(args, env, tmp_path)
    assert again.returncode != 0 and "exists" in again.stderr
    paired = run_mammo([*args[:2], str(trained), *args[3:5], "0.3.0", *args[6:]], env,
                       tmp_path)
    assert paired.returncode != 0 and "already reads breasts in pairs" in paired.stderr
    other = write_mias_like(tmp_path / "other", pairs=3, seed=11)
    wrong = run_mammo([*args[:3], str(other), "--version", "0.4.0", *args[6:]], env, tmp_path)
    assert wrong.returncode != 0 and "is not the data" in wrong.stderr


def test_models_merge_pools_two_recipes_trunks_fold_by_fold(trained: Path,
                                                            tmp_path: Path) -> None:
    data = trained.parents[2] / "mias"
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    # Another recipe on the same folds: one trunk per fold, contrastively pretrained (the
    # fixture's recipe is not: pretraining is its costliest step), no fine-tuning, trunks
    # of other widths (merge rebuilds each trunk from its own config).
    other = run_mammo(["train", str(data), "--output", str(tmp_path / "other"), "--name",
                       "tiny", "--version", "0.2.0", "--folds", "2", "--local-contrast", "24",
                       "--epochs", "1", "--finetune-epochs", "0", "--pretrain-epochs", "1",
                       "--input-size", "128", "--patch", "32", "--widths", "8,8,8,8,8",
                       "--bootstrap", "20"], env, tmp_path, timeout=TRAIN_TIMEOUT_S)
    assert other.returncode == 0, other.stderr
    assert "contrastive epoch 1/1" in other.stderr
    other_dir = Path(other.stdout.strip().splitlines()[-1])
    pretrained = resolve_model(str(other_dir)).metadata["training"]
    assert pretrained["pretrain_epochs"] == 1
    assert [len(losses) for losses in pretrained["pretrain_losses"]] == [1, 1]
    assert "first learnt for 1 epoch without labels, contrastively" in (
        other_dir / "MODEL_CARD.md").read_text()
    out = tmp_path / "merged"
    done = run_mammo(["models", "merge", str(trained), str(other_dir), str(data), "--version",
                      "0.3.0", "--output", str(out)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    merged = resolve_model(done.stdout.strip().splitlines()[-1])
    meta = merged.metadata
    assert meta["ensemble_members"] == 6 and meta["training"]["members"] == 3
    assert [s["version"] for s in meta["merged_from"]] == ["0.1.0", "0.2.0"]
    # The recipes differ here, so no single value claims to be the merged recipe.
    assert "pretrain_epochs" not in meta["training"] and "epochs" not in meta["training"]
    assert "widths" not in meta["training"]
    assert meta["training"]["local_contrast_sigma"] == 24.0
    own = resolve_model(str(trained)).metadata["training"]["best_epochs"]
    theirs = resolve_model(str(other_dir)).metadata["training"]["best_epochs"]
    assert meta["training"]["best_epochs"] == [*own[:2], theirs[0], *own[2:], theirs[1]]
    assert 0.0 <= meta["validation"]["ece"] <= 1.0 and meta["bilateral"]["images_paired"] == 12
    card = (merged.directory / "MODEL_CARD.md").read_text()
    assert "Merged ensemble" in card
    assert "version 0.2.0 (1 per fold; 1 contrastive pretraining epoch;" in card
    import keras

    import models.layers  # noqa: F401  (registers the custom layers)

    model = keras.models.load_model(merged.model_path, compile=False, safe_mode=True)
    assert sorted(layer.name for layer in model.layers if layer.name.startswith("trunk_")) == [
        f"trunk_{k}_{m}" for k in (1, 2) for m in (1, 2, 3)]
    # A merged model has no single recipe to re-split, and is scored like any model.
    resplit = run_mammo(["models", "repeat-cv", str(merged.directory), str(data), "--seeds",
                         "5"], env, tmp_path)
    assert resplit.returncode == 4 and "re-split each source model" in resplit.stderr
    scored = run_mammo(["evaluate", str(data), "--model", str(merged.directory), "--format",
                        "json"], env, tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout[:scored.stdout.rindex("}") + 1])["n"] == 12


def test_merging_a_model_with_its_copy_reproduces_its_validation(trained: Path,
                                                                 tmp_path: Path) -> None:
    # Identical trunks averaged give the same evidence: if folds, trunk order or evidence
    # scales were misaligned anywhere, the held-out figures would move.
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    data = trained.parents[2] / "mias"
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'c.db'}")
    done = run_mammo(["models", "merge", str(trained), str(copy), str(data), "--version",
                      "0.4.0", "--output", str(tmp_path / "out")], env, tmp_path)
    assert done.returncode == 0, done.stderr
    merged = resolve_model(done.stdout.strip().splitlines()[-1]).metadata
    own = resolve_model(str(trained)).metadata
    for block in ("validation", "baseline"):
        for key in ("auc_abnormal", "auc_malignant", "ece", "accuracy"):
            assert merged[block][key] == pytest.approx(own[block][key], abs=1e-6)
    assert merged["localisation"] == own["localisation"]
    # Models from other folds cannot be pooled honestly: refused with the reason.
    meta = json.loads((copy / "metadata.json").read_text())
    meta["seed"] += 1
    meta["training"]["seed"] += 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    refused = run_mammo(["models", "merge", str(trained), str(copy), str(data), "--version",
                         "0.5.0", "--output", str(tmp_path / "out")], env, tmp_path)
    assert refused.returncode == 4 and "differ in seed" in refused.stderr


def test_evaluate_json_has_exactly_the_contract_keys(trained: Path, tmp_path: Path) -> None:
    data = write_mias_like(tmp_path / "eval", pairs=3, seed=11)
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'e.db'}")
    done = run_mammo(["evaluate", str(data), "--model", str(trained), "--format", "json"],
                     env, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result) == EVALUATE_KEYS
    assert result["n"] == 6 and len(result["predictions"]) == 6
    assert result["model"]["sha256"] == resolve_model(str(trained)).sha256
    first = result["predictions"][0]
    assert list(first) == ["id", "truth", "label", "p_normal", "p_benign", "p_malignant"]
    assert abs(first["p_normal"] + first["p_benign"] + first["p_malignant"] - 1) < 1e-6
    assert sum(map(sum, result["confusion_matrix"])) == 6
    assert "6 of 6 images read against the other breast" in done.stderr

    # --single-image gives each image's own reading; the default is that reading put
    # through the model's bilateral head with the patient's other breast.
    alone = run_mammo(["evaluate", str(data), "--model", str(trained), "--format", "json",
                       "--single-image"], env, tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "read against the other breast" not in alone.stderr
    single = {p["id"]: [p["p_normal"], p["p_benign"], p["p_malignant"]]
              for p in json.loads(alone.stdout)["predictions"]}
    head = bilateral_head(resolve_model(str(trained)).metadata)
    assert head is not None
    for row in result["predictions"]:
        n = int(row["id"][3:])
        partner = f"mdb{n + 1 if n % 2 else n - 1:03d}"
        expected = head.apply(np.array([single[row["id"]]]), np.array([single[partner]]))[0]
        assert [row["p_normal"], row["p_benign"], row["p_malignant"]] == pytest.approx(
            expected.tolist(), abs=1e-6)


def test_activated_model_is_the_one_run_uses(trained: Path, tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    env = mammo_env(database_url=f"sqlite:///{db}", chunk_size="4")
    activated = run_mammo(["models", "activate", str(trained)], env, tmp_path)
    assert activated.returncode == 0, activated.stderr
    listed = json.loads(run_mammo(["models", "list", "--format", "json"], env, tmp_path).stdout)
    [row] = [r for r in listed if r["active"]]
    assert (row["name"], row["version"], row["in_use"]) == ("tiny", "0.1.0", True)

    folder = tmp_path / "exams"
    make_exam_set(folder, n_exams=2, seed=5)
    done = run_mammo(["run", str(folder), "--format", "json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(select(Prediction.heatmap_png, ModelVersion.name)
                            .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
                            ).all()
    engine.dispose()
    assert len(rows) == 8 and {r.name for r in rows} == {"tiny"}
    heatmap = decode_png(rows[0].heatmap_png)
    assert heatmap.ndim == 2 and 0.0 <= heatmap.min() <= heatmap.max() <= 1.0


@pytest.mark.realdata
def test_shipped_model_scores_real_mammograms(tmp_path: Path) -> None:
    mias = SHARED_DATA / "mini-mias"
    if not mias.is_dir():
        pytest.skip(f"{mias} is absent (real mammograms are not part of the repository)")
    manifest = tmp_path / "few.csv"
    rows = ["path,label", f"{mias / 'mdb001.png'},benign", f"{mias / 'mdb003.png'},normal",
            f"{mias / 'mdb005.png'},benign", f"{mias / 'mdb023.png'},malignant"]
    manifest.write_text("\n".join(rows) + "\n")
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'r.db'}")
    done = run_mammo(["evaluate", str(manifest), "--format", "json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n"] == 4 and result["model"]["name"] == "default"
