"""`mammo train` / `mammo models` argument handling that needs no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from producer.cli.exit_codes import ExitCode
from producer.cli.main import cli


def _env(tmp_path: Path, model: str) -> dict[str, str]:
    return {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": model}


def test_imagenet_weights_are_a_bad_argument_said_clearly(tmp_path: Path) -> None:
    # No configuration makes them work offline: README's exit 2 (bad arguments), not 4.
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--weights", "imagenet"],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'--weights'" in result.output
    assert "never downloads" in result.output and "--weights none" in result.output


def _renamed(src: Path, target: Path, name: str, version: str) -> Path:
    from models.registry import sealed

    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps(sealed(
        {**meta, "name": name, "version": version})))
    return target


def test_activate_refuses_other_weights_under_a_shipped_name_and_version(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # What a plain `mammo train DATA` writes: default 1.8.0, the shipped model's name and
    # version with other weights; results could not tell the two apart.
    from models.registry import resolve_model

    shipped = resolve_model("default")
    namesake = _renamed(tiny_model_dir, tmp_path / "tm" / "default" / shipped.version,
                        "default", shipped.version)
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": None}
    runner = CliRunner()
    refused = runner.invoke(cli, ["models", "activate", str(namesake)], env=env)
    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert f"the shipped {shipped.directory} (sha256 {shipped.sha256[:12]})" in refused.output
    assert "--version NEW" in refused.output
    listed = json.loads(runner.invoke(cli, ["models", "list", "--format", "json"],
                                      env=env).output)
    assert not any(r["active"] for r in listed)
    assert [r["path"] for r in listed if r["sha256"] != shipped.sha256
            and (r["name"], r["version"]) == ("default", shipped.version)] == []
    assert runner.invoke(cli, ["models", "activate", "default"], env=env).exit_code == 0


def test_a_namesake_given_as_mammo_model_is_refused_not_registered(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scoring with it used to register it, and activation then took it as known.
    from models.registry import resolve_model
    from shared.synthetic import make_exam_set
    from tests.helpers.cli import invoke_cli

    shipped = resolve_model("default")
    namesake = _renamed(tiny_model_dir, tmp_path / "tm" / "default" / shipped.version,
                        "default", shipped.version)
    make_exam_set(tmp_path / "four", n_exams=1, seed=3)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    code, out = invoke_cli(["run", "four"], monkeypatch, tmp_path, database_url=url,
                           model=str(namesake))
    assert code == ExitCode.NO_MODEL, out
    assert "MAMMO_MODEL is refused" in out and "--version NEW" in out
    assert f"(sha256 {resolve_model(str(namesake)).sha256[:12]})" in out
    assert f"(sha256 {shipped.sha256[:12]})" in out
    code, out = invoke_cli(["models", "list", "--format", "json"], monkeypatch, tmp_path,
                           database_url=url)
    assert [r["path"] for r in json.loads(out) if "registered" in r["source"]] == [], out
    code, out = invoke_cli(["models", "activate", str(namesake)], monkeypatch, tmp_path,
                           database_url=url)
    assert code == ExitCode.USAGE, out


def test_activating_beside_a_registered_namesake_shows_the_sha256(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.activation import _row
    from models.registry import resolve_model
    from shared.config import Settings
    from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
    from shared.db.schema import ModelVersion
    from tests.helpers.cli import invoke_cli

    shipped = resolve_model("default")
    namesake = resolve_model(str(_renamed(tiny_model_dir, tmp_path / "tm", "default",
                                          shipped.version)))
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:  # registered before it was refused
        session.add(ModelVersion(**_row(namesake)))
        session.commit()
    engine.dispose()
    code, out = invoke_cli(["models", "activate", "default"], monkeypatch, tmp_path,
                           database_url=url)
    assert code == ExitCode.OK, out
    assert (f"active model: default {shipped.version} (sha256 {shipped.sha256[:12]}) "
            f"({shipped.directory})") in out


def test_train_warns_before_training_when_its_name_and_version_are_taken(
        tmp_path: Path, tiny_model_spec: Any) -> None:
    from models.activation import register
    from models.registry import resolve_model
    from shared.config import Settings
    from shared.db.engine import create_db_engine, ensure_schema, make_session_factory

    env = _env(tmp_path, "default")
    data = tmp_path / "data"
    data.mkdir()  # empty: refused right after the warning, before any training
    engine = create_db_engine(Settings(database_url=env["MAMMO_DATABASE_URL"], _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        register(session, tiny_model_spec)
        session.commit()
    engine.dispose()
    shipped = resolve_model("default")
    cases = (([], f"default {shipped.version} is already the name and version of the "
              f"shipped {shipped.directory}"),
             (["--name", tiny_model_spec.name, "--version", tiny_model_spec.version],
              f"the registered {tiny_model_spec.directory.resolve()}"),
             (["--version", "0.0.0-mine"], None))
    for options, warning in cases:
        result = CliRunner().invoke(cli, ["train", str(data), "--output",
                                          str(tmp_path / "out"), *options], env=env)
        assert result.exit_code == ExitCode.USAGE, result.output  # the empty DATA
        if warning is None:
            assert "warning" not in result.output
        else:
            assert warning in result.output and "give --version" in result.output


def test_bad_input_size_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--input-size", "12x12"],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == 2 and "at least 64" in result.output


def test_train_never_overwrites_a_model_and_says_so_before_training(tmp_path: Path) -> None:
    existing = tmp_path / "out" / "default" / "9.9.9"
    existing.mkdir(parents=True)
    (existing / "model.keras").write_bytes(b"a model someone relies on")
    data = tmp_path / "data"
    data.mkdir()  # empty: had training started, it would fail on the data instead
    result = CliRunner().invoke(cli, ["train", str(data), "--output", str(tmp_path / "out"),
                                      "--version", "9.9.9"], env=_env(tmp_path, "default"))
    assert result.exit_code == 4, result.output
    assert f"{existing} exists: choose another --version or --output" in result.output
    assert (existing / "model.keras").read_bytes() == b"a model someone relies on"


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


def test_train_defaults_are_the_shipped_default_models_recipe() -> None:
    # `mammo train DATA` with no options must re-train the model `mammo run` uses: the
    # card's reproducibility claim and `mammo models compare` rest on it.
    import dataclasses

    from models.registry import resolve_model
    from models.repeated_splits import recipe
    from models.train_run import TrainConfig
    from producer.cli.commands_model import _bilateral_scores, _size, _widths, train_command

    defaults = TrainConfig()
    shipped = recipe(resolve_model("default").metadata)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"command"}
    differing = [k for k in fields if getattr(shipped, k) != getattr(defaults, k)]
    assert differing == []
    # The options given as text go through the command's own parsers.
    parse = {"widths": _widths, "input_size": _size, "bilateral": _bilateral_scores,
             "patch": int}
    options = {p.name: parse.get(str(p.name), lambda v: v)(p.default)
               for p in train_command.params if p.name in fields}
    assert {"version", "stage_convs", "seed", "widths", "patch"} <= set(options)
    assert {k: getattr(defaults, k) for k in options} == options


def test_models_show_names_the_same_model_whatever_the_folder(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.registry import resolve_model

    (tmp_path / "default" / "junk").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": None}
    shipped = resolve_model("default")
    activated = CliRunner().invoke(cli, ["models", "activate", str(tiny_model_dir)], env=env)
    assert activated.exit_code == 0, activated.output
    for extra, expected in (({}, tiny_model_dir), ({"MAMMO_MODEL": "default"}, None)):
        shown = CliRunner().invoke(cli, ["models", "show"], env={**env, **extra})
        assert shown.exit_code == 0, shown.output
        directory = json.loads(shown.output)["directory"]
        assert directory == str(expected or shipped.directory)
    named = CliRunner().invoke(cli, ["models", "show", "default"], env=env)
    assert json.loads(named.output)["directory"] == str(shipped.directory)


def test_models_show_and_activate_take_name_version_as_models_list_shows_it(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    from models.registry import sealed

    elsewhere = tmp_path / "elsewhere" / "tiny" / "0.1.0"
    shutil.copytree(tiny_model_dir, elsewhere)
    meta = json.loads((elsewhere / "metadata.json").read_text())
    (elsewhere / "metadata.json").write_text(json.dumps(sealed(
        {**meta, "name": "tiny", "version": "0.1.0"})))
    env = {"MAMMO_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAMMO_MODEL": None}
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "activate", str(elsewhere)], env=env).exit_code == 0
    assert runner.invoke(cli, ["models", "activate", "default"], env=env).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["models", "list", "--format", "json"],
                                      env=env).output)
    for row in listed:
        shown = runner.invoke(cli, ["models", "show", f"{row['name']}:{row['version']}"],
                              env=env)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["sha256"] == row["sha256"]
    activated = runner.invoke(cli, ["models", "activate", "tiny:0.1.0"], env=env)
    assert activated.exit_code == 0, activated.output
    assert f"active model: tiny 0.1.0 ({elsewhere})" in activated.output


@pytest.mark.parametrize("command", [
    ["train"], ["evaluate"], ["models", "merge", "a", "b", "--version", "2.0.0"],
])
def test_missing_data_is_path_not_found_as_for_run(tmp_path: Path, command: list[str]) -> None:
    # README: exit 6 is "path not found", whichever command was given the path.
    missing = tmp_path / "no-such-data"
    result = CliRunner().invoke(cli, [*command, str(missing)], env=_env(tmp_path, "default"))
    assert result.exit_code == 6, result.output
    assert f"Path does not exist: {missing}" in result.output


@pytest.mark.parametrize(("option", "value"), [
    ("--version", "../../escape"), ("--version", "1.0/2"), ("--name", ".."),
    ("--name", "a b"), ("--version", ""),
])
def test_a_name_or_version_that_is_not_one_folder_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, option: str, value: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", str(data), "--output", "out", option, value],
                                env=_env(tmp_path, "default"))
    assert result.exit_code == 2, result.output
    assert f"{value!r} must be one folder name" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_a_model_folder_is_only_ever_under_the_output(tmp_path: Path) -> None:
    from models.registry import new_model_dir
    from shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"the version '\.\./x' must be one folder"):
        new_model_dir(tmp_path / "out", "default", "../x")
    with pytest.raises(ConfigurationError, match="the name 'a/b' must be one folder"):
        new_model_dir(tmp_path / "out", "a/b", "1.0.0")
    assert new_model_dir(tmp_path / "out", "default", "1.8.1-rc.2+cpu") == (
        tmp_path / "out" / "default" / "1.8.1-rc.2+cpu")


@pytest.mark.parametrize(("command", "module", "function"), [
    (["models", "bilateral", "default"], "models.bilateral_version", "derive"),
    (["models", "merge", "default", "default"], "models.merge", "merge"),
])
def test_a_derived_model_goes_under_trained_models_unless_told(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str], module: str,
        function: str) -> None:
    # `mammo models bilateral` defaulted to --output models: from the repository root it
    # wrote into the shipped model tree, where `merge` says that is a deliberate step.
    import importlib

    given: list[Path] = []

    def derive(_spec: Any, _data: Path, output: Path, *_rest: Any) -> Path:
        given.append(output)
        return output / "x"

    monkeypatch.setattr(importlib.import_module(module), function, derive)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    runner = CliRunner()
    result = runner.invoke(cli, [*command, str(data), "--version", "9.9.9"],
                           env=_env(tmp_path, "default"))
    assert result.exit_code == 0, result.output
    assert given == [Path("trained-models")]
    shown = " ".join(runner.invoke(cli, [*command[:2], "--help"]).output.split())
    assert ("--output PATH Root the new <name>/<version>/ directory goes under (models/ would "
            "make it the default model: a deliberate step). [default: trained-models]") in shown


def _help_examples(command: list[str]) -> list[list[str]]:
    """The `mammo ...` lines of ``command``'s help, as words."""
    import shlex

    output = CliRunner().invoke(cli, [*command, "--help"]).output
    return [shlex.split(line) for line in map(str.strip, output.splitlines())
            if line.startswith("mammo ")]


def _options_exist(example: list[str]) -> None:
    import click

    group: click.Command = cli
    words = example[1:]
    while isinstance(group, click.Group):
        found = group.get_command(click.Context(group), words[0])
        assert found is not None, example
        group, words = found, words[1:]
    known = {opt for param in group.params for opt in param.opts}
    unknown = [w for w in words if w.startswith("--") and w not in known]
    assert not unknown, (example, unknown)


@pytest.mark.parametrize("command", [
    ["models", "compare"], ["models", "repeat-cv"], ["models", "record-splits"]])
def test_no_help_example_rewrites_the_shipped_models_record(command: list[str]) -> None:
    # Copied as printed, `mammo models compare default ... --record`, `repeat-cv default
    # ... --record` and `record-splits default ...` rewrote the shipped default model's
    # metadata.json and MODEL_CARD.md.
    from models.registry import resolve_model

    examples = _help_examples(command)
    own = [e for e in examples if e[1:3] == command]
    writing = [e for e in own if command[1] == "record-splits" or "--record" in e]
    assert writing, examples
    shipped = resolve_model("default").directory.parent.parent
    for example in writing:
        ref = example[3]
        assert ref != "default" and ":" not in ref, example
        assert not Path(ref).resolve().is_relative_to(shipped.resolve()), example
        assert Path(ref).parts[0] == "trained-models", example
    if command[1] != "record-splits":  # a read-only example against the shipped model stays
        assert any(e[3] == "default" and "--record" not in e for e in own), examples
    for example in examples:
        _options_exist(example)
