"""Machine formats keep one shape: an empty CSV has the header of a full one."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from producer.cli.exit_codes import ExitCode
from shared.formatting import csv_cell, render, without_control
from shared.queries import BATCH_STATUS_KEYS, RESULT_KEYS
from shared.reports.exports import write_csv
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
    (["worklist", "--format", "csv"], FLAT_WORKLIST_KEYS),
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
    code, out = invoke_cli(["report", "worklist", "--format", "csv", "-o", "w.csv"],
                           monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert _header((tmp_path / "w.csv").read_text()) == list(FLAT_WORKLIST_KEYS)


def test_table_cells_are_text_not_markup() -> None:
    buffer = io.StringIO()
    rows = [{"file": "[bold]x.png"}, {"file": "[red]bad.png"}]
    render(rows, "table", keys=("file",), console=Console(file=buffer, width=80))
    assert "[bold]x.png" in buffer.getvalue() and "[red]bad.png" in buffer.getvalue()


def test_table_cells_keep_emoji_codes_as_typed() -> None:
    # Rich turns ":cd:" in markup text into an emoji: a file name or accession number
    # holding one must show as stored (the cells are Text, never parsed as markup).
    buffer = io.StringIO()
    render([{"file": "scan:cd:1.dcm"}], "table", keys=("file",),
           console=Console(file=buffer, width=80))
    assert "scan:cd:1.dcm" in buffer.getvalue(), buffer.getvalue()


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_listings_show_terminal_control_characters_instead_of_sending_them(fmt: str) -> None:
    name = "x\x1b]0;PWNED\x07\x1b[31mRED\x9b2J\r.dcm"
    buffer = io.StringIO()
    render([{"file": name}], fmt, keys=("file",),
           console=Console(file=buffer, width=120, force_terminal=False))
    out = buffer.getvalue()
    assert not any(c in out for c in "\x1b\x07\x9b\r"), repr(out)
    assert "x\\x1b]0;PWNED\\x07\\x1b[31mRED\\x9b2J\\x0d.dcm" in out


def test_csv_files_show_control_characters_as_the_listing_does(tmp_path: Path) -> None:
    # A batch-N.csv is `cat`-ed as often as a listing is printed: the same text in both.
    rows = [{"source": "/in/\x1b[31mred\tx.png", "error_message": "line\nbreak"}]
    listed = _csv(rows, ("source", "error_message"))
    written = list(csv.reader(write_csv(rows, tmp_path / "r.csv", columns=(
        "source", "error_message")).open(encoding="utf-8", newline="")))
    assert listed == written == [["source", "error_message"],
                                 ["/in/\\x1b[31mred\\x09x.png", "line\nbreak"]]


def test_one_line_text_shows_the_newline_too() -> None:
    assert without_control("a\nb\x1b") == "a\nb\\x1b"  # a table cell may wrap
    assert without_control("a\nb\x1b", one_line=True) == "a\\x0ab\\x1b"  # a log line not


FORMULAS = ("=1+2", "+1", "-2+3", "@SUM(A1)", "=HYPERLINK(\"http://x\")")


@pytest.mark.parametrize("text", FORMULAS)
def test_text_a_spreadsheet_would_run_is_written_as_text(text: str) -> None:
    assert csv_cell(text) == "'" + text
    assert csv_cell("a=1") == "a=1" and csv_cell("") == "" and csv_cell(None) is None
    # After a separator a spreadsheet may split the cell at, the same guard.
    for separator in ";\n":
        assert csv_cell("/in/a" + separator + text) == "/in/a" + separator + "'" + text
    assert csv_cell("/in/a," + text) == "/in/a," + text  # quoted, in one comma field
    # A leading tab or carriage return is shown as \x09 / \x0d: no longer a formula start.
    assert csv_cell("\t" + text) == "\\x09" + text


@pytest.mark.parametrize("separator", [";", "\n"])
def test_a_cell_a_spreadsheet_could_split_stays_text(separator: str, tmp_path: Path) -> None:
    value = f"/in/a{separator}=2+5{separator}.png"
    rows = [{"source": value, "image_id": 9, "state": "failed"}]
    keys = ("image_id", "source", "state")
    buffer = io.StringIO()
    render(rows, "csv", keys=keys, console=Console(file=buffer))
    for text in (buffer.getvalue(),
                 write_csv(rows, tmp_path / "r.csv", columns=keys).read_text(encoding="utf-8")):
        guarded = f"/in/a{separator}'=2+5{separator}.png"
        # Quoted as a whole, and read back by Python's csv as the guarded value.
        assert f'9,"{guarded}",failed' in text, text
        assert next(csv.DictReader(io.StringIO(text)))["source"] == guarded
        # Excel with ";" as its list separator: quotes count only at a field's start.
        for line in text.splitlines():
            assert not any(c.startswith("=") for c in line.split(";")), line


def test_numbers_stay_numbers_in_csv() -> None:
    # Only text is neutralised: a negative number must stay a number a spreadsheet sums.
    assert csv_cell(-0.25) == -0.25 and csv_cell(-3) == -3 and csv_cell(0) == 0
    rows = [{"a": -0.25, "b": -3, "c": "=1+2"}]
    assert _csv(rows, ("a", "b", "c")) == [["a", "b", "c"], ["-0.25", "-3", "'=1+2"]]


def test_every_csv_writer_neutralises_formulas(tmp_path: Path) -> None:
    rows = [{"image_id": 1, "source": "=HYPERLINK(\"http://x\",\"y\").png",
             "error_message": "@cmd", "p_normal": -0.5}]
    listed = _csv(rows, RESULT_KEYS)
    written = list(csv.reader(write_csv(rows, tmp_path / "r.csv").open(encoding="utf-8")))
    for table in (listed, written):
        row = dict(zip(table[0], table[1], strict=True))
        assert row["source"] == "'=HYPERLINK(\"http://x\",\"y\").png"
        assert row["error_message"] == "'@cmd" and row["p_normal"] == "-0.5"
        assert row["image_id"] == "1"


def test_json_is_plain_json_of_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich's print_json re-parses and highlights: 19 s for 20,000 rows against 0.2 s.
    def slow(*_: object, **__: object) -> None:
        raise AssertionError("JSON went through Rich's renderer")

    monkeypatch.setattr(Console, "print_json", slow)
    monkeypatch.setattr(Console, "print", slow)
    rows = [{"id": 1, "name": "Müller 中 [red]x", "p": -0.5, "none": None,
             "nested": {"flags": ["a", "=b"]}, "at": datetime(2026, 11, 24, 3, 4, 5)}]
    buffer = io.StringIO()
    render(rows, "json", keys=("id",), console=Console(file=buffer, width=20))
    text = buffer.getvalue()
    assert "Müller 中" in text  # readable, not \\u escapes
    assert json.loads(text) == [{**rows[0], "at": "2026-11-24T03:04:05+00:00"}]


def test_json_escapes_the_terminal_controls_json_dumps_leaves_raw() -> None:
    # json.dumps escapes C0 (ESC as \u001b) but writes DEL and C1 raw: CSI (\x9b) would
    # reach the admin's terminal from a DICOM header printed with --format json.
    rows = [{"name": "a\x9b2Jb\x7fc\x85d\x1be", "ok": "Ω é"}]
    buffer = io.StringIO()
    render(rows, "json", keys=("name",), console=Console(file=buffer))
    text = buffer.getvalue()
    assert not any(0x7F <= ord(ch) <= 0x9F or (ord(ch) < 0x20 and ch != "\n") for ch in text)
    assert "\\u009b" in text and "Ω é" in text
    assert json.loads(text) == rows
