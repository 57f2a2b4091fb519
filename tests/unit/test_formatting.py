"""Machine formats keep one shape: an empty CSV has the header of a full one."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from producer.cli.exit_codes import ExitCode
from shared.formatting import render
from shared.queries import BATCH_STATUS_KEYS, RESULT_KEYS
from shared.reports.worklist import FLAT_WORKLIST_KEYS
from tests.helpers.cli import invoke_cli


def _csv(rows: list[dict[str, object]], keys: tuple[str, ...]) -> list[list[str]]:
    buffer = io.StringIO()
    render(rows, "csv", keys=keys, columns=("a",), console=Console(file=buffer))
    return list(csv.reader(io.StringIO(buffer.getvalue())))


def test_csv_header_is_the_keys_with_or_without_rows() -> None:
    keys = ("a", "b", "c")
    assert _csv([], keys) == [list(keys)]
    assert _csv([{"a": 1, "b": None, "c": "x", "extra": 2}], keys) == [list(keys), ["1", "", "x"]]


def _header(out: str) -> list[str]:
    return out.strip().splitlines()[0].split(",")


@pytest.mark.parametrize(("args", "keys"), [
    (["results", "--state", "failed", "--format", "csv"], RESULT_KEYS),
    (["worklist", "--batch", "99", "--format", "csv"], FLAT_WORKLIST_KEYS),
    (["status", "--format", "csv"], BATCH_STATUS_KEYS),
])
def test_empty_listings_print_the_full_csv_header(args: list[str], keys: tuple[str, ...],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    code, out = invoke_cli(args, monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert _header(out) == list(keys)


def test_an_empty_run_prints_the_result_keys_as_csv_header(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = invoke_cli(["run", str(tmp_path / "empty"), "--format", "csv"], monkeypatch,
                           tmp_path, model=str(tiny_model_dir))
    assert code == ExitCode.OK, out
    assert ",".join(RESULT_KEYS) in out.splitlines()


def test_an_empty_worklist_report_csv_has_the_full_header(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    code, out = invoke_cli(["report", "worklist", "99", "--format", "csv", "-o", "w.csv"],
                           monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert _header((tmp_path / "w.csv").read_text()) == list(FLAT_WORKLIST_KEYS)


def test_table_cells_are_text_not_markup() -> None:
    buffer = io.StringIO()
    rows = [{"file": "[bold]x.png"}, {"file": "[red]bad.png"}]
    render(rows, "table", keys=("file",), console=Console(file=buffer, width=80))
    assert "[bold]x.png" in buffer.getvalue() and "[red]bad.png" in buffer.getvalue()
