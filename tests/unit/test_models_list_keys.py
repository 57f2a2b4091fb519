"""`mammo models list`: JSON and CSV give the same keys in the same order, for shipped and
registered rows alike."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from tests.helpers.cli import invoke_cli


def test_json_and_csv_list_the_same_keys_in_the_same_order(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    code, out = invoke_cli(["models", "activate", str(tiny_model_dir)], monkeypatch,
                           tmp_path, database_url=url)
    assert code == ExitCode.OK, out
    code, as_json = invoke_cli(["models", "list", "--format", "json"], monkeypatch, tmp_path,
                               database_url=url)
    assert code == ExitCode.OK, as_json
    code, as_csv = invoke_cli(["models", "list", "--format", "csv"], monkeypatch, tmp_path,
                              database_url=url)
    assert code == ExitCode.OK, as_csv
    header = next(csv.reader(io.StringIO(as_csv)))
    rows = json.loads(as_json)
    assert {r["source"] for r in rows} == {"shipped", "registered"}
    assert [list(r) for r in rows] == [header] * len(rows)
