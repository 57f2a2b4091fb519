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


def _seeded(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
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
    assert rows("other:1.1.0") == []


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
