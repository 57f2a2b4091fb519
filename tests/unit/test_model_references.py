"""A model is named the way results print it (NAME:VERSION) as well as NAME/VERSION or
VERSION; a wrong name blames where it was typed; machine formats carry the whole sha256."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from tests.helpers.cli import invoke_cli
from tests.helpers.seed_results import seed_results


def _seeded(tmp_path: Path, url: str | None = None) -> str:
    url = url or f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    seed_results(engine, 40, n_batches=2)
    engine.dispose()
    return url


def test_results_model_version_accepts_name_colon_version(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    url = _seeded(tmp_path)

    def rows(wanted: str) -> list[dict[str, object]]:
        code, out = invoke_cli(["results", "--model-version", wanted, "--format", "json"],
                               monkeypatch, tmp_path, database_url=url)
        assert code == ExitCode.OK, out
        found: list[dict[str, object]] = json.loads(out)
        return found

    by_version = rows("1.1.0")
    assert by_version and {r["model_version"] for r in by_version} == {"default:1.1.0"}
    assert rows("default:1.1.0") == by_version
    assert rows("default/1.1.0") == by_version  # as the models commands accept it too


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("typed", ["defualt:1.1.0", "1.1", "Default:1.1.0", "other:1.1.0",
                                   "default:1.1.0:x"])
def test_results_refuse_a_model_version_no_model_has(
        backend: str, typed: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """A typo in --model-version is a usage error naming the versions there are, as an
    unknown --batch, --study or --patient is: it printed [] and exited 0, "no results"."""
    url = _seeded(tmp_path, request.getfixturevalue("postgres_url")
                  if backend == "postgresql" else None)
    code, out = invoke_cli(["results", "--model-version", typed, "--format", "json"],
                           monkeypatch, tmp_path, database_url=url)
    assert code == ExitCode.USAGE, out
    assert f"no model version {typed!r}" in out
    assert "those that exist: default:1.0.0, default:1.1.0." in out


def test_results_by_model_version_before_any_model_scored(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    code, out = invoke_cli(["results", "--model-version", "1.8.0"], monkeypatch, tmp_path,
                           database_url=url)
    assert code == ExitCode.USAGE, out
    assert "no model has scored an image in this database yet" in out


def test_models_show_accepts_the_printed_form(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    code, out = invoke_cli(["models", "show", "default:1.8.0"], monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert json.loads(out)["version"] == "1.8.0"


@pytest.mark.parametrize(("args", "named"), [
    (["models", "show", "9.9.9"], "REF='9.9.9'"),
    (["models", "activate", "/nonexistent"], "REF='/nonexistent'"),
    (["evaluate", ".", "--model", "nonexistent"], "--model='nonexistent'"),
])
def test_an_unknown_model_blames_where_it_was_named(args: list[str], named: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    code, out = invoke_cli(args, monkeypatch, tmp_path)
    assert code == ExitCode.NO_MODEL
    assert named in out and "MAMMO_MODEL" not in out


def test_models_list_machine_formats_carry_the_whole_sha256(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    code, out = invoke_cli(["models", "list", "--format", "json"], monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert all(len(row["sha256"]) == 64 for row in json.loads(out))
    code, out = invoke_cli(["models", "list", "--format", "csv"], monkeypatch, tmp_path)
    header, first = (line.split(",") for line in out.splitlines()[:2])
    assert len(first[header.index("sha256")]) == 64
