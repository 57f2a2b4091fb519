"""``mammo train``, ``mammo evaluate`` and ``mammo models list|show|activate|compare|repeat-cv``.

TensorFlow is imported only inside the commands that need it (train, evaluate).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode, exit_code_for
from producer.cli.options import format_option
from shared.errors import ModelComparisonError, UserFacingError
from shared.extras import WORKER, require
from shared.formatting import render

EVALUATE_COLUMNS = ("id", "truth", "label", "p_normal", "p_benign", "p_malignant")
SUMMARY_KEYS = ("n", "accuracy", "auc_abnormal", "auc_malignant",
                "sensitivity_at_90_specificity", "ece")
CONFUSION_KEYS = ("truth", "pred_normal", "pred_benign", "pred_malignant")
MODEL_LIST_KEYS = ("name", "version", "sha256", "preprocessing_version", "source", "path",
                   "active", "in_use", "problem")
MODEL_LIST_COLUMNS = ("name", "version", "sha256", "active", "in_use", "source", "path",
                      "problem")
COMPARE_KEYS = ("metric", "this", "rerun", "difference")
SPREAD_KEYS = ("figure", "mean", "sd", "min", "max")
F = TypeVar("F", bound=Callable[..., Any])


def _size(value: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH (e.g. 512x512)") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 64:
        raise click.BadParameter(f"{value!r}: give HEIGHTxWIDTH, each at least 64")
    return parts[0], parts[1]


def _widths(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not 5 comma-separated integers") from None
    if len(widths) != 5 or min(widths) < 1:
        raise click.BadParameter(f"{value!r}: give 5 positive channel counts")
    return widths


def _say(message: str) -> None:
    click.echo(message, err=True)


def _existing(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    # README's "path not found" (exit 6, as `mammo run` says it), not a usage error.
    from producer.discovery import check_paths

    return check_paths([value])[0]


def _data_argument(func: F) -> F:
    """DATA, the labelled set (a MIAS folder, a CSV manifest or a folder per class)."""
    return click.argument("data", type=click.Path(path_type=Path), callback=_existing)(func)


def _folder_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A --name or --version: it names a folder under --output, so it stays one folder."""
    from models.registry import folder_name_problem

    if (problem := folder_name_problem(value)) is not None:
        raise click.BadParameter(problem)
    return value


# Where a new model directory goes unless told: models/ is the shipped tree, and a model
# written there becomes the default model (a deliberate step, never a default's side effect).
NEW_MODEL_ROOT = Path("trained-models")


def _new_model_root(func: F) -> F:
    """--output of a command that derives a new model directory from existing ones."""
    return click.option(
        "--output", type=click.Path(path_type=Path), default=NEW_MODEL_ROOT,
        show_default=True, help="Root the new <name>/<version>/ directory goes under "
        "(models/ would make it the default model: a deliberate step).")(func)


def _offline_weights(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # A value no configuration can make work offline: a bad argument (exit 2), not exit 4.
    if value != "none":
        raise click.BadParameter(
            f"{value} weights are never available: this system never downloads weights at "
            "run time (offline, reproducible). Train from scratch with --weights none.")
    return value


@click.command("train")
@_data_argument
@click.option("--output", type=click.Path(path_type=Path), default=NEW_MODEL_ROOT,
              show_default=True, help="The model is written to OUTPUT/NAME/VERSION/.")
@click.option("--name", default="default", show_default=True, callback=_folder_name)
@click.option("--version", "version", default="1.8.0", show_default=True, callback=_folder_name,
              help="Names the output directory (the default names the default recipe's "
              "model, 1.8.0).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="Patient-level cross-validation folds.")
@click.option("--members", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Trunks trained per fold, each with its own seed; the shipped ensemble "
              "holds FOLDS x MEMBERS trunks.")
@click.option("--local-contrast", "local_contrast", type=click.FloatRange(1.0, 200.0),
              default=None, help="Let the trunks see each pixel against a Gaussian mean "
              "(this sigma, in input pixels; 24 was measured) of the breast around it. Off "
              "by default: not better within noise on mini-MIAS (README).")
@click.option("--finetune-epochs", "finetune_epochs", type=click.IntRange(0, 100), default=8,
              show_default=True, help="After patch training, train each trunk this many "
              "epochs on whole images through the shipped top-5 read-out (Shen et al.'s "
              "second step). It moves the heatmap peak into the circle more often and "
              "raised the abnormal AUC of randomly initialised trunks on 3 of 3 splits; it "
              "lowered both AUCs of pretrained ones (README). 0 turns it off.")
@click.option("--finetune-locations", "finetune_locations", type=click.FloatRange(0.0, 10.0),
              default=1.0, show_default=True, help="Fine-tune with location labels too: "
              "this weight on a loss over every map location of every training image "
              "(normal outside the lesion circles, the circle's class inside). Paired on 3 "
              "patient splits it raised the mean of the two AUCs by +0.034 on average "
              "(1.7.0, README). 0 trains on image labels only (1.4.0's recipe).")
@click.option("--pretrain-epochs", "pretrain_epochs", type=click.IntRange(0, 200), default=0,
              show_default=True, help="Before patch training, train each trunk this many "
              "epochs without labels, contrastively (SimCLR), on patches of its fold's "
              "training images (1.5.0 used 20, with --finetune-epochs 0). About 13 s an "
              "epoch per trunk on 2 CPU cores. Alone worse on average over 5 patient "
              "splits; pooled with the default recipe's trunks (`mammo models merge`) it "
              "helped on 2 of 3 splits (README).")
@click.option("--average-from", "average_from", type=click.IntRange(0), default=0,
              show_default=True, help="End each trunk's patch training with the mean of its "
              "weights from this epoch to the early stop (stochastic weight averaging) "
              "instead of the epoch with the lowest patch validation loss. 0 turns it off "
              "(tests/benchmarks/weight_averaging.py compares the two).")
@click.option("--negatives-ratio", "negatives_ratio", type=click.FloatRange(0.5, 20.0),
              default=2.0, show_default=True, help="Normal-tissue patches drawn per lesion "
              "patch in each patch-training epoch.")
@click.option("--hard-negatives", "hard_negatives", type=click.IntRange(0, 64), default=3,
              show_default=True, help="Normal locations the trunk currently scores highest, "
              "mined per training image in each mining round and trained on as normal (up "
              "to half the normal patches). 8, with --negatives-ratio 5, was measured on 3 "
              "patient splits: no gain (README).")
@click.option("--bilateral", default="abnormal", show_default=True,
              help="Scores read against the same patient's other breast (same view) where "
              "it is present: abnormal, malignant, abnormal,malignant (or both) or none. Reading "
              "malignant in pairs lost AUC on every split measured (README).")
@click.option("--epochs", type=click.IntRange(1), default=36, show_default=True,
              help="Maximum epochs per fold (early stopping usually ends sooner).")
@click.option("--patience", type=click.IntRange(1), default=12, show_default=True)
@click.option("--input-size", "input_size", default="512x512", show_default=True,
              help="Model input HEIGHTxWIDTH after preprocessing.")
@click.option("--patch", type=click.Choice(["32", "64", "96", "128"]), default="64",
              show_default=True, help="Training patch side, in input pixels.")
@click.option("--widths", default="24,48,96,144,192", show_default=True,
              help="Channels of the 5 convolution stages of each trunk.")
@click.option("--stage-convs", "stage_convs", type=click.IntRange(1, 4), default=2,
              show_default=True, help="3 x 3 convolutions in each of the 3 stages after a "
              "pooling. 2 (1.8.0) is 2.2 times the multiply-adds of 1 (1.7.0's trunk); "
              "over four patient splits it put the mean of the two AUCs +0.036 above 1 "
              "(models/EXPERIMENTS.md).")
@click.option("--seed", type=int, default=20261125, show_default=True)
@click.option("--bootstrap", type=click.IntRange(10), default=1000, show_default=True,
              help="Bootstrap rounds for the 95% intervals.")
@click.option("--weights", type=click.Choice(["none", "imagenet"]), default="none",
              show_default=True, callback=_offline_weights, help="Initial weights. Only "
              "'none' works: nothing is ever downloaded.")
@pass_cli
def train_command(cli: CliContext, data: Path, output: Path, name: str, version: str,
                  folds: int, members: int, local_contrast: float | None,
                  finetune_epochs: int, finetune_locations: float, pretrain_epochs: int,
                  average_from: int,
                  negatives_ratio: float, hard_negatives: int, bilateral: str, epochs: int,
                  patience: int, input_size: str, patch: str, widths: str, stage_convs: int,
                  seed: int, bootstrap: int, weights: str) -> None:
    """Train, cross-validate, calibrate and write a model directory with its model card.

    DATA is a MIAS folder (Info.txt + mdbNNN images), a CSV manifest
    (path,label[,patient_id,laterality,view]) or a folder per class
    (normal/, benign/, malignant/). Validation is by patient where the data name patients:
    both breasts of a patient always fall in the same fold (images without a patient
    identity are split one by one, and the model card says so).

    \b
    Example:
        mammo train ../shared/data/mini-mias --output trained-models --version 1.8.0-local
        mammo models activate trained-models/default/1.8.0-local
    """
    require(WORKER, needed_for="`mammo train`")  # before the data set is read, not after
    from models.train_run import TrainConfig, train

    size = _size(input_size)
    if int(patch) > min(size):
        raise click.BadParameter(
            f"{patch} px patches do not fit in a {size[0]}x{size[1]} input: patches are cut "
            f"from the input image and the whole-image model pools over one patch. Give a "
            f"--patch of at most {min(size)} or a larger --input-size.", param_hint="--patch")
    _warn_of_namesakes(cli, name, version)
    command = "mammo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else (
        "mammo train DATA")
    config = TrainConfig(name=name, version=version, input_size=size, folds=folds,
                         members=members, local_contrast_sigma=local_contrast,
                         finetune_epochs=finetune_epochs,
                         finetune_location_weight=finetune_locations,
                         pretrain_epochs=pretrain_epochs,
                         average_from=average_from, negatives_ratio=negatives_ratio,
                         hard_negatives=hard_negatives, seed=seed,
                         epochs=epochs, patience=patience, patch=int(patch),
                         widths=_widths(widths), stage_convs=stage_convs,
                         bootstrap_rounds=bootstrap, max_pixels=cli.settings.max_image_pixels,
                         bilateral=_bilateral_scores(bilateral), command=command)
    directory = train(data, output, config, _say)
    click.echo(str(directory))


def _warn_of_namesakes(cli: CliContext, name: str, version: str) -> None:
    """Say before training when NAME VERSION is taken: the new weights will differ, so the
    result can be compared with that model (a same-seed re-run) but not activated."""
    from sqlalchemy.exc import DatabaseError

    from models.activation import namesakes

    database = cli.engine.url.database
    try:
        if cli.engine.dialect.name == "sqlite" and not (database and Path(database).is_file()):
            found = namesakes(None, name, version)  # no database file: nothing registered
        else:
            with cli.sessions() as session:
                found = namesakes(session, name, version)
    except (UserFacingError, DatabaseError):  # training needs no database
        found = namesakes(None, name, version)
    if found:
        click.secho(f"warning: {name} {version} is already the name and version of "
                    f"{' and '.join(found.values())}. This run can be compared with it "
                    "(`mammo models compare`), but `mammo models activate` will refuse it: "
                    "give --version (or --name) to train a model to activate.",
                    err=True, fg="yellow")


def _bilateral_scores(value: str, option: str = "--bilateral") -> tuple[str, ...]:
    from models.bilateral import SCORES

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if names == ("none",):
        return ()
    if names == ("both",):
        return SCORES
    unknown = [n for n in names if n not in SCORES]
    if unknown or not names:
        raise click.BadParameter(f"{value!r}: give abnormal, malignant, both (or the two "
                                 "separated by a comma), or none", param_hint=option)
    return tuple(s for s in SCORES if s in names)


@click.command("evaluate")
@_data_argument
@click.option("--model", "model_ref", default=None,
              help="Model directory or shipped name (default: the model workers would run).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True,
              help="csv: one row per image (id, truth, label, p_*); the figures go to stderr.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--single-image", is_flag=True,
              help="Score every image alone, even where the model reads a breast against "
              "the patient's other breast.")
@pass_cli
def evaluate_command(cli: CliContext, data: Path, model_ref: str | None, fmt: str,
                     batch_size: int, single_image: bool) -> None:
    """Score labelled DATA with a model; print accuracy, AUCs, ECE and every prediction.

    Where the model has a bilateral head and DATA pairs a patient's two breasts (same
    view), each breast is read against the other, as exam results are. Exits 3 when some
    images could not be read: the figures are printed, of the others only. Where DATA is
    (or holds) the model's training images, a warning says so on stderr (the JSON holds
    exactly PRODUCT.md's keys): such figures are not held-out figures (the shipped models
    were trained on ../shared/data/mini-mias).

    \b
    Example:
        mammo evaluate held-out/ --format json > eval.json
        mammo evaluate labelled/ --format csv > predictions.csv
    """
    require(WORKER, needed_for="`mammo evaluate`")
    from models.evaluation import evaluate

    spec = _spec(cli, model_ref, "--model")
    warnings: list[str] = []
    unread: list[tuple[Path, str]] = []
    result = evaluate(spec, data, max_pixels=cli.settings.max_image_pixels,
                      batch_size=batch_size, progress=_say, bilateral=not single_image,
                      warnings=warnings, unread=unread)
    _print_evaluation(result, fmt, warnings, f"{spec.name} {spec.version} on {data}")
    if unread:  # after the figures, as the last line: they are of part of DATA only
        from models.evaluation import unread_summary

        _say(unread_summary(unread, result["n"]))
        raise SystemExit(ExitCode.IMAGES_FAILED)


def _print_evaluation(result: dict[str, Any], fmt: str, warnings: list[str],
                      title: str) -> None:
    for warning in warnings:  # stderr: the JSON has exactly PRODUCT.md's keys (issue #4)
        _say(f"warning: {warning}")
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    if fmt == "csv":
        # stdout stays one table a spreadsheet opens; the figures, a line for the person.
        render(result["predictions"], "csv", keys=EVALUATE_COLUMNS)
        _say(f"{title}: " + ", ".join(f"{k} {_figure(result[k])}" for k in SUMMARY_KEYS))
        return
    render(result["predictions"], "table", keys=EVALUATE_COLUMNS, title="Predictions")
    render([{**{k: result[k] for k in SUMMARY_KEYS},
             "warning": "; ".join(warnings) or None}], "table", keys=(*SUMMARY_KEYS, "warning"),
           title=title)
    render([{"truth": t, **{f"pred_{p}": n for p, n in zip(("normal", "benign", "malignant"),
                                                           row, strict=True)}}
            for t, row in zip(("normal", "benign", "malignant"), result["confusion_matrix"],
                              strict=True)], "table", keys=CONFUSION_KEYS,
           title="Confusion matrix")


def _figure(value: Any) -> str:  # an AUC is None where DATA lacks one of its classes
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _spec(cli: CliContext, ref: str | None, named_by: str) -> Any:
    from models.activation import model_for

    if ref is not None:
        return _resolve(cli, ref, named_by)
    with cli.sessions() as session:
        return model_for(cli.settings, session)


def _resolve(cli: CliContext, ref: str, named_by: str) -> Any:
    """The model REF names: a path, a shipped model, or NAME:VERSION as `models list` shows
    it (shipped, an alternative, or registered in the database: its stored path, checked)."""
    from models.activation import resolve_ref

    # Lazily (`sessions` is a property that migrates): a path or a shipped name needs no
    # database.
    return resolve_ref(ref, lambda: cli.sessions(), named_by=named_by)  # noqa: PLW0108


@click.group("models")
def models_group() -> None:
    """List, inspect and activate model versions.

    \b
    Example:
        mammo models list
        mammo models activate default:1.8.0
    """


@models_group.command("list")
@format_option
@pass_cli
def models_list(cli: CliContext, fmt: str) -> None:
    """Shipped models and the versions registered in the database; marks the active one.

    ``in_use``: what a process started now with this configuration would load (MAMMO_MODEL,
    else the activation); never a broken one, which such a process refuses. Workers already
    running keep the model they started with: `mammo status` lists the model versions each
    worker scored with lately.

    \b
    Example:
        mammo models list --format json
    """
    from models.activation import active_version, model_for
    from models.registry import integrity_problem, shipped_models
    from shared.db.schema import ModelVersion

    with cli.sessions() as session:
        registered = list(session.query(ModelVersion).order_by(ModelVersion.id))
        active = active_version(session)
        try:
            current: str | None = str(model_for(cli.settings, session).directory.resolve())
        except UserFacingError:  # no usable model is a valid state for `list`
            current = None
    rows: dict[str, dict[str, Any]] = {}
    for spec in shipped_models():
        rows[str(spec.directory.resolve())] = {
            "name": spec.name, "version": spec.version, "sha256": spec.sha256,
            "preprocessing_version": spec.preprocessing_version, "source": "shipped",
            "path": str(spec.directory), "problem": integrity_problem(spec)}
    for mv in registered:
        row = rows.setdefault(mv.path, {
            "name": mv.name, "version": mv.version, "sha256": mv.sha256,
            "preprocessing_version": mv.preprocessing_version, "path": mv.path,
            "problem": _registered_problem(mv)})
        row["source"] = "shipped+registered" if row.get("source") == "shipped" else "registered"
    for path, row in rows.items():
        row["active"] = bool(active and active.path == path)
        # A broken model is in use by no process started now: each refuses it at load (a
        # tampered model.keras passed model_for, which hashes nothing, and read in_use).
        row["in_use"] = path == current and row["problem"] is None
    # JSON gives each row's keys in the order of the CSV columns, shipped or registered.
    ordered = [{key: row[key] for key in MODEL_LIST_KEYS} for row in rows.values()]
    # Machine formats carry the whole sha256 (scripts compare it); a table needs only a prefix.
    shown = [{**r, "sha256": r["sha256"][:12]} if fmt == "table" else r for r in ordered]
    render(shown, fmt, keys=MODEL_LIST_KEYS, columns=MODEL_LIST_COLUMNS, title="Models")


def _registered_problem(row: Any) -> str | None:
    """Why a registered model's directory is unusable now (one line), or None: `list`
    shows a broken row as broken instead of failing."""
    from models.registry import integrity_problem, resolve_model

    if not Path(row.path).is_dir():
        return "broken: directory missing"
    try:
        spec = resolve_model(row.path, named_by="the registered path")
    except UserFacingError as exc:
        return f"broken: {exc}"
    if (spec.name, spec.version, spec.sha256) != (row.name, row.version, row.sha256):
        return (f"broken: now holds {spec.name} {spec.version} (sha256 {spec.sha256[:12]})")
    return integrity_problem(spec)


@models_group.command("show")
@click.argument("ref", required=False)
@pass_cli
def models_show(cli: CliContext, ref: str | None) -> None:
    """Metadata and validation figures of one model (default: the one in use).

    A model that workers, `evaluate` and `activate` would refuse (weights or metadata
    changed, another preprocessing version) is still shown, its problem first on stderr and
    in `integrity`, and exits 5 as they do.

    \b
    Example:
        mammo models show default
    """
    from models.registry import UNSEALED, is_sealed, verify_model
    from shared.imaging.preprocess import PREPROCESSING_VERSION

    spec = _spec(cli, ref, "REF")
    meta = dict(spec.metadata)
    problem: UserFacingError | None = None
    try:
        verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
        meta["integrity"] = ("ok: sha256, metadata seal and preprocessing version match"
                             if is_sealed(spec) else
                             f"ok: sha256 and preprocessing version match; warning: {UNSEALED}")
    except UserFacingError as exc:  # shown, not raised: `show` is how one inspects a bad model
        problem = exc
        meta["integrity"] = str(exc)
    meta["directory"] = str(spec.directory)
    if problem is not None:
        # First, where a person looks: at the end of a few hundred lines of JSON it went
        # unseen, and exit 0 told scripts the model was fine.
        click.secho(f"error: {problem}", err=True, fg="red")
    click.echo(json.dumps(meta, indent=2))
    if problem is not None:
        raise SystemExit(exit_code_for(problem))


@models_group.command("activate")
@click.argument("ref")
@pass_cli
def models_activate(cli: CliContext, ref: str) -> None:
    """Make REF (a model directory or shipped name) the model workers run by default.

    Stored in the database, so every worker sharing it switches at its next start; an
    explicit MAMMO_MODEL still wins. Refused when a shipped or registered model with other
    weights already has REF's name and version: results could not tell the two apart.

    \b
    Example:
        mammo models activate trained-models/default/1.8.0-local
    """
    from models.activation import activate, describe, identity_clash
    from shared.imaging.preprocess import PREPROCESSING_VERSION
    from worker.classifier import Classifier

    spec = _resolve(cli, ref, "REF")
    with cli.sessions() as session:
        session.connection()  # an unusable database is said before seconds of model loading
        if (clash := identity_clash(session, spec)) is not None:
            raise click.BadParameter(clash, param_hint="REF")
        # Loaded exactly as a worker loads it (checks without TensorFlow, then Keras and one
        # traced call): weights that only Keras finds broken would otherwise be activated
        # and stop every worker at its next start.
        Classifier(spec, batch_size=1, preprocessing_version=PREPROCESSING_VERSION).load()
        activate(session, spec)
        session.commit()
        shown = describe(session, spec)  # with its sha256 where a namesake is registered
    click.echo(f"active model: {shown} ({spec.directory})")
    click.echo("running workers keep their model until they restart; `mammo status` shows "
               "the model versions each worker scored with lately")


@models_group.command("compare")
@click.argument("ref")
@click.argument("rerun")
@click.option("--record", is_flag=True,
              help="Write the comparison into REF's metadata.json and regenerate its "
              "MODEL_CARD.md.")
@format_option
@pass_cli
def models_compare(cli: CliContext, ref: str, rerun: str, record: bool, fmt: str) -> None:
    """Compare REF with a same-seed re-run of its training command (RERUN).

    Validation figures and ablation rows side by side; the re-run reproduces REF when both
    validation AUCs stay inside REF's own bootstrap 95% interval half-width. --record writes
    into REF's folder: give it a model of your own, not the shipped default.

    \b
    Examples:
        mammo train ../shared/data/mini-mias --output /tmp/rerun --version 1.8.0
        mammo models compare default /tmp/rerun/default/1.8.0
        mammo train ../shared/data/mini-mias --name mine --version 0.2.0
        mammo train ../shared/data/mini-mias --name mine --version 0.2.0 --output /tmp/rerun
        mammo models compare trained-models/mine/0.2.0 /tmp/rerun/mine/0.2.0 --record
    """
    from models.model_card import record_in_metadata
    from models.reproducibility import compare_runs

    this, other = _resolve(cli, ref, "REF"), _resolve(cli, rerun, "RERUN")
    try:
        result = compare_runs(this.metadata, other.metadata)
    except (KeyError, ValueError) as exc:
        raise ModelComparisonError(
            f"cannot compare {this.directory} with {other.directory}: {exc}. Both must be "
            "`mammo train` outputs of the same seed and data.") from exc
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        render(result["rows"], fmt, keys=COMPARE_KEYS,
               title=f"{this.name} {this.version} against {result['rerun']}")
        click.echo(result["verdict"])
    if record:
        path = record_in_metadata(this.directory, "reproducibility", result)
        click.echo(f"recorded in {path} and {this.directory / 'MODEL_CARD.md'}")


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated integers") from None
    return seeds


@models_group.command("repeat-cv")
@click.argument("ref")
@_data_argument
@click.option("--seeds", "seed_list", default="20261325,20261425,20261525", show_default=True,
              help="Comma-separated seeds, each one more patient split (about 40 minutes "
              "each for the default recipe, 1.8.0's, on 2 CPU cores; 27 for 1.7.0's).")
@click.option("--record", is_flag=True,
              help="Add these splits to the record in REF's metadata.json (a seed run "
              "again replaces its row) and regenerate its MODEL_CARD.md.")
@format_option
@pass_cli
def models_repeat_cv(cli: CliContext, ref: str, data: Path, seed_list: str, record: bool,
                     fmt: str) -> None:
    """Cross-validate REF's recorded recipe on other patient splits of its training DATA.

    One split's figures on a few hundred images can flatter a model by several hundredths
    of AUC. Each seed re-runs the recipe exactly as `mammo train --seed SEED` would (own
    folds, own trunk seeds), and prints the held-out figures of the CNN and the feature
    baseline per split, with their mean and spread. REF's weights are not changed; --record
    writes into its folder: give it a model of your own, not the shipped default.

    \b
    Examples:
        mammo models repeat-cv default ../shared/data/mini-mias --seeds 20261325
        mammo models repeat-cv trained-models/mine/0.2.0 ../shared/data/mini-mias --record
    """
    from models.model_card import record_in_metadata
    from models.repeated_splits import FIGURES, SPLIT_ROW_KEYS, check_seeds, merge, repeat

    spec = _resolve(cli, ref, "REF")
    seeds = _seeds(seed_list)
    try:
        check_seeds(spec.metadata.get("seed", 0), seeds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from None
    try:
        result = repeat(spec.metadata, data, seeds, _say,
                        max_pixels=cli.settings.max_image_pixels)
    except KeyError as exc:
        raise ModelComparisonError(
            f"{spec.directory} records no training recipe ({exc} missing from its "
            "metadata.json): only `mammo train` outputs can be re-split.") from exc
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        render(result["rows"], fmt, keys=SPLIT_ROW_KEYS,
               columns=("seed", "source", *FIGURES),
               title=f"{spec.name} {spec.version} on {len(result['rows'])} patient splits")
        render([{"figure": k, **v} for k, v in result["spread"].items() if v], fmt,
               keys=SPREAD_KEYS, title="Spread over the splits")
    if record:
        path = record_in_metadata(spec.directory, "repeated_splits",
                                  merge(spec.metadata.get("repeated_splits"), result))
        click.echo(f"recorded in {path} and {spec.directory / 'MODEL_CARD.md'}")


@models_group.command("record-splits")
@click.argument("ref")
@click.argument("runs", nargs=-1, required=True)
@format_option
@pass_cli
def models_record_splits(cli: CliContext, ref: str, runs: tuple[str, ...], fmt: str) -> None:
    """Add RUNS, other `mammo train --seed S` runs of REF's exact recipe, to REF's record.

    What `mammo models repeat-cv --record` would train again, taken from runs already
    trained (for example for `mammo models merge`): each run's held-out figures become one
    more patient split in REF's metadata.json and MODEL_CARD.md (a seed already in the
    record gets its row replaced). A run with another recipe, other training data or REF's
    own seed is refused. It writes into REF's folder: give it a model of your own, not the
    shipped default.

    \b
    Example:
        mammo train ../shared/data/mini-mias --name mine --version 0.2.0-seed7 --seed 7
        mammo models record-splits trained-models/mine/0.2.0 trained-models/mine/0.2.0-seed7
    """
    import datetime as dt

    from models.model_card import record_in_metadata
    from models.registry import METADATA_FILE
    from models.repeated_splits import FIGURES, SPLIT_ROW_KEYS, from_runs, merge

    spec = _resolve(cli, ref, "REF")
    found = [_resolve(cli, run, "RUNS") for run in runs]
    dates = [dt.datetime.fromtimestamp((r.directory / METADATA_FILE).stat().st_mtime,
                                       tz=dt.UTC).date().isoformat() for r in found]
    try:
        result = from_runs(spec.metadata, [r.metadata for r in found], dates)
    except (KeyError, ValueError) as exc:
        raise ModelComparisonError(f"{spec.name} {spec.version}: {exc}") from exc
    recorded = merge(spec.metadata.get("repeated_splits"), result)
    render(recorded["rows"], fmt, keys=SPLIT_ROW_KEYS,
           columns=("seed", "source", *FIGURES),
           title=f"{spec.name} {spec.version} on {len(recorded['rows'])} patient splits")
    path = record_in_metadata(spec.directory, "repeated_splits", recorded)
    click.echo(f"recorded in {path} and {spec.directory / 'MODEL_CARD.md'}")


@models_group.command("bilateral")
@click.argument("ref")
@_data_argument
@click.option("--version", required=True, callback=_folder_name,
              help="Version of the new model directory.")
@_new_model_root
@click.option("--scores", "score_list", default="abnormal", show_default=True,
              help="Scores read against the other breast (as `mammo train --bilateral`).")
@pass_cli
def models_bilateral(cli: CliContext, ref: str, data: Path, version: str, output: Path,
                     score_list: str) -> None:
    """Write a new version of REF that reads each breast against the other breast.

    The head is fitted on REF's held-out predictions (validation_predictions.json) over its
    training DATA, validated fold by fold on the same patient folds; the trunks are not
    retrained, so model.keras and its sha256 stay the same. Prints the new directory.

    \b
    Example:
        mammo models bilateral models/default/1.2.0 ../shared/data/mini-mias \\
            --version 1.3.0
    """
    from models.bilateral_version import derive

    scores = _bilateral_scores(score_list, "--scores")
    if not scores:
        raise click.BadParameter("name at least one score", param_hint="--scores")
    command = "mammo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    spec = _resolve(cli, ref, "REF")
    click.echo(str(derive(spec, data, output, version, scores, command, _say)))


@models_group.command("merge")
@click.argument("refs", nargs=-1, required=True)
@_data_argument
@click.option("--version", required=True, callback=_folder_name,
              help="Version of the new model directory.")
@_new_model_root
@pass_cli
def models_merge(cli: CliContext, refs: tuple[str, ...], data: Path, version: str,
                 output: Path) -> None:
    """Write one ensemble of the trunks of REFS (two or more models), pooled fold by fold.

    The models must come from `mammo train` on the same DATA with the same seed (so the same
    patient folds) and the same input; their recipes may differ. Every image is validated
    on the trunks that never saw it, and the head, the bilateral head and the calibration
    are fitted afresh on that pooled held-out evidence, as a training run does. Nothing is
    retrained (a few minutes on 2 CPU cores). Prints the new directory.

    \b
    Example:
        mammo models merge models/default/1.4.0 models/alternatives/1.5.0 \\
            ../shared/data/mini-mias --version 1.6.0
    """
    from models.merge import merge

    specs = [_resolve(cli, ref, "REFS") for ref in refs]
    command = "mammo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    click.echo(str(merge(specs, data, output, version, command, _say)))


COMMANDS = (train_command, evaluate_command, models_group)
