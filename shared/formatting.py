"""One renderer for every listing command: ``--format table|csv|json``, and the cell and JSON
conversions every CSV and JSON file the product writes goes through."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS = ("table", "csv", "json")

# A spreadsheet runs a cell that starts with one of these as a formula ("CSV injection",
# OWASP): a file name or accession number "=HYPERLINK(...)" in an export must stay text.
# (A leading tab or carriage return, OWASP's other two, is shown as \x09 / \x0d first.)
_FORMULA_START = ("=", "+", "-", "@")
# Cells written quoted: besides those with a comma, a quote or a line end, those with a ";"
# (the list separator German, French or Dutch Excel splits a line at) or a tab, so a reader
# that honours the quotes keeps the cell whole.
_NEEDS_QUOTES = re.compile('[",;\t\r\n]')
# A formula start right after ";" or a line break (control characters are escaped first):
# quotes count only where a field starts, and a spreadsheet splitting a comma-separated line
# at ";" starts its fields elsewhere ('15,9,"/in/a' | '=2+5' | '.png",failed'), so such a
# formula start gets its own single quote too.
_FORMULA_AFTER_SPLIT = re.compile(f"(?<=[;\n])(?=[{re.escape(''.join(_FORMULA_START))}])")
# C0 and C1 control characters (ESC, BEL, CSI ...) and DEL, but not the newline: a file name
# or DICOM text printed raw could retitle the terminal, recolour it or rewrite what was shown.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# The same and the newline, for text that must stay on one line (a log line's file name).
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What ``json.dumps`` leaves raw of those: DEL and C1 (CSI, OSC ...), which a terminal
# obeys as much as ESC. Written as JSON's own \u escapes, so a parser reads the same data.
_JSON_RAW_CONTROL = re.compile(r"[\x7f-\x9f]")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        # Every datetime here is UTC (SQLite hands them back naive): ISO 8601 with +00:00.
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: terminal control characters shown as ``\\xNN`` (as the
    table shows them: a CSV is printed, or ``cat`` later, as often as it is opened), and
    text a spreadsheet would run as a formula, at the cell's start or after a separator it
    may split the cell at, gets a single quote before it, so it shows as typed; numbers
    (negative ones too) and None stay as they are, so a spreadsheet still sums them."""
    value = _plain(value)
    if not isinstance(value, str):
        return value
    value = _FORMULA_AFTER_SPLIT.sub("'", without_control(value))
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_field(value: Any) -> str:
    """One written cell: quoted (a quote doubled) when it holds a quote or any separator a
    spreadsheet may split at, so every spreadsheet keeps it whole (Excel honours the
    double-quote text qualifier whatever its list separator)."""
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def write_csv_rows(fh: TextIO, rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[str], *, lineterminator: str = "\r\n") -> None:
    """A header of exactly ``columns`` (also with no rows: a script reading an empty export
    must see the same columns), then one line per row, every cell through ``csv_cell``.
    Written here, not by ``csv.writer``: its minimal quoting cannot be told to quote ``;``
    (Python 3.11 has no per-cell quoting), and quoting every cell would change every line;
    Python's ``csv`` module reads the result back as the same values."""
    _write_csv_line(fh, columns, lineterminator)
    for row in rows:
        _write_csv_line(fh, [csv_cell(row.get(k)) for k in columns], lineterminator)


def _write_csv_line(fh: TextIO, cells: Sequence[Any], lineterminator: str) -> None:
    # A line of one empty cell is quoted, as csv.writer does: a blank line is no row.
    fh.write((",".join(map(_csv_field, cells)) or '""') + lineterminator)


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    return plain if plain is not value else str(value)


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as JSON text: non-ASCII kept readable, datetimes ISO 8601 in UTC, enums as
    their values. Plain ``json.dumps``: Rich's ``print_json`` took 19 s for 20,000 rows."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=_json_default)
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    # Cells are data (file names, error messages), never Rich markup: "[red]x.png" must
    # show as typed; and never terminal control: ESC shows as \x1b (CSV cells too; JSON
    # keeps the data as it is, its own escapes included).
    return escape(without_control(str(value)))


def without_control(text: str, *, one_line: bool = False) -> str:
    """``text`` with terminal control characters shown as ``\\xNN`` (ESC as ``\\x1b``);
    ``one_line``: the newline too, so that a file name cannot start a forged log line."""
    return (_CONTROL_OR_NEWLINE if one_line else _CONTROL).sub(_visible, text)


def _visible(found: re.Match[str]) -> str:
    return f"\\x{ord(found.group()):02x}"


def default_console() -> Console:
    """Stdout console; when piped, wide enough that tables do not fold every cell."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=240, soft_wrap=True)


def render(
    rows: Sequence[Mapping[str, Any]], fmt: str, *, keys: Sequence[str],
    columns: Sequence[str] | None = None, title: str | None = None,
    console: Console | None = None,
) -> None:
    """Print ``rows``: JSON carries every key of each row; CSV exactly ``keys`` (the same
    header with no rows: a script reading an empty export must see the same columns); the
    table ``columns`` (default: ``keys``)."""
    out = console or default_console()
    if fmt == "json":
        out.file.write(json_text([{k: _plain(v) for k, v in r.items()} for r in rows]) + "\n")
        return
    if fmt == "csv":
        buffer = io.StringIO()
        write_csv_rows(buffer, rows, keys, lineterminator="\n")
        out.file.write(buffer.getvalue())
        return
    shown = list(columns or keys)
    table = Table(title=title, show_lines=False)
    for key in shown:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k in shown))
    out.print(table)
