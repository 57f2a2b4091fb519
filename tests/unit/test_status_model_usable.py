"""`mammo status --health` fails when no worker could load its model.

Probe: the activated model's directory re-copied with another model (another sha256), or
deleted. `mammo models list` showed it "broken", every `mammo worker` exited 5 at start,
while `mammo status --health` exited 0 naming ``model_active: tiny-test-model:0.0.1``: a
monitoring check built on it stayed green. It now checks the model a worker would load
(the activation, else MAMMO_MODEL) as a worker does before loading it, without TensorFlow,
and exits 5 (no usable model) with the path, what is wrong and what to do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.registry import MODEL_FILE
from producer.cli.exit_codes import ExitCode
from tests.helpers.cli import run_cli
from tests.helpers.tiny_model import build_tiny_model, change_model_files


@pytest.fixture(scope="module")
def other_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-test-model 0.0.2: other weights, as a re-copy of a newer version brings."""
    return build_tiny_model(tmp_path_factory.mktemp("other"), seed=11, version="0.0.2")


def break_model(change: str, live: Path, other_version: Path) -> None:
    """``replaced``/``deleted`` as ``change_model_files``; ``edited``: model.keras's bytes
    changed in place under its metadata (a half-finished copy, a corrupted disk)."""
    if change == "edited":
        with (live / MODEL_FILE).open("ab") as handle:
            handle.write(b"\0")
    else:
        change_model_files(change, live, live, other_version)


# What the one line says of each change, after the path.
SAYS = {"replaced": "no longer holds the activated model tiny-test-model 0.0.1",
        "deleted": "is not a directory on this machine",
        "edited": "the file was changed or corrupted"}


def _health(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str,
            **env: str) -> tuple[int, dict[str, object] | str, str]:
    result = run_cli(["status", "--health", "--format", fmt], monkeypatch, tmp_path, **env)
    row = json.loads(result.stdout)[0] if fmt == "json" else result.stdout
    return result.exit_code, row, " ".join(result.stderr.split())


@pytest.mark.parametrize("change", ["replaced", "deleted", "edited"])
def test_health_exits_5_naming_the_activated_models_path_once_it_is_broken(
        change: str, tiny_model_dir: Path, other_version: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    live = tmp_path / "models" / "live"
    shutil.copytree(tiny_model_dir, live)  # the session's tiny model stays whole
    env = {"database_url": f"sqlite:///{tmp_path / 'mammo.db'}"}
    activated = run_cli(["models", "activate", str(live)], monkeypatch, tmp_path, **env)
    assert activated.exit_code == ExitCode.OK, activated.output

    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.OK, (row, warned)
    assert isinstance(row, dict)
    assert (row["model_active"], row["model_usable"], row["model_problem"]) == (
        "tiny-test-model:0.0.1", True, None)
    assert list(row).index("model_usable") == list(row).index("model_active") + 1

    break_model(change, live, other_version)
    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.NO_MODEL, (row, warned)
    assert isinstance(row, dict)
    assert (row["model_active"], row["model_usable"]) == ("tiny-test-model:0.0.1", False)
    problem = str(row["model_problem"])
    assert str(live) in problem and SAYS[change] in problem, problem
    assert "\n" not in problem and "`mammo models activate` another model" in problem
    assert (row["database"], row["broker"]) == ("reachable", "embedded (no broker)")
    assert f"warning: a worker started now would refuse its model and exit 5 (workers " \
           f"already running keep the model they started with): {problem}" in warned

    # The table (one wrapped row of ~30 columns) judges as JSON does, and warns the same.
    code, table, warned = _health(monkeypatch, tmp_path, "table", **env)
    assert code == ExitCode.NO_MODEL and "False" in str(table)
    assert problem in warned

    # Plain `mammo status` shows it without judging (exit 0), as the broker's state.
    plain = run_cli(["status"], monkeypatch, tmp_path, **env)
    assert plain.exit_code == ExitCode.OK, plain.output
    assert "model usable: False\n" in plain.stdout
    assert "warning: a worker started now would refuse its model" in plain.stderr

    # The remedy it names: another model activated heals it.
    healed = run_cli(["models", "activate", str(other_version)], monkeypatch, tmp_path, **env)
    assert healed.exit_code == ExitCode.OK, healed.output
    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.OK and isinstance(row, dict), (row, warned)
    assert (row["model_usable"], row["model_problem"]) == (True, None)
    assert "refuse its model" not in warned


def test_health_checks_mammo_model_when_none_is_activated(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    live = tmp_path / "live"
    shutil.copytree(tiny_model_dir, live)
    env = {"database_url": f"sqlite:///{tmp_path / 'mammo.db'}", "model": str(live)}
    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.OK and isinstance(row, dict), (row, warned)
    assert (row["model_active"], row["model_usable"]) == (None, True)

    break_model("edited", live, live)
    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.NO_MODEL and isinstance(row, dict), (row, warned)
    problem = str(row["model_problem"])
    assert str(live / MODEL_FILE) in problem and "Re-copy or retrain it." in problem
    assert "mammo models activate" not in problem  # MAMMO_MODEL wins over any activation

    shutil.rmtree(live)
    code, row, warned = _health(monkeypatch, tmp_path, "json", **env)
    assert code == ExitCode.NO_MODEL and isinstance(row, dict), (row, warned)
    assert f"No model found for MAMMO_MODEL={str(live)!r}" in str(row["model_problem"])
