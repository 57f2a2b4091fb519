"""One renderer for every listing command: ``--format table|csv|json``, and the cell and JSON
conversions every CSV and JSON file the product writes goes through."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

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


# Values written as they are, before any text rule (exact types: a str or int subclass, an
# IntEnum, goes the whole way): a number, negative ones too, stays a number a spreadsheet sums.
_AS_THEY_ARE = frozenset({int, float, bool, type(None)})
_NUMBERS = frozenset({int, float, bool})


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: terminal control characters shown as ``\\xNN`` (as the
    table shows them: a CSV is printed, or ``cat`` later, as often as it is opened), and
    text a spreadsheet would run as a formula, at the cell's start or after a separator it
    may split the cell at, gets a single quote before it, so it shows as typed; numbers
    (negative ones too) and None stay as they are, so a spreadsheet still sums them."""
    if type(value) in _AS_THEY_ARE:  # 2.9 million cells of a year's export: no regex
        return value
    value = _plain(value)
    if not isinstance(value, str):
        return value
    if not (value.isascii() and value.isprintable() and ";" not in value):
        # Only text with a control character, a line break or a ";" can change inside.
        value = _FORMULA_AFTER_SPLIT.sub("'", without_control(value))
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_field(value: Any) -> str:
    """One written cell: quoted (a quote doubled) when it holds a quote or any separator a
    spreadsheet may split at, so every spreadsheet keeps it whole (Excel honours the
    double-quote text qualifier whatever its list separator)."""
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def _csv_text(value: Any) -> str:
    """``_csv_field(csv_cell(value))``, with the common cells (numbers, None, plain ASCII
    text) decided without a regex: ``str`` of an int, float or bool needs no quotes."""
    if value is None:
        return ""
    kind = type(value)
    if kind in _NUMBERS:
        return str(value)
    if kind is str and value.isascii() and value.isprintable() and ";" not in value:
        # No control character, line break, tab or ";": a formula start is only possible
        # at the cell's start, and only a quote or comma asks for the quotes.
        if value.startswith(_FORMULA_START):
            value = "'" + value
        return '"' + value.replace('"', '""') + '"' if '"' in value or "," in value else value
    return _csv_field(csv_cell(value))


def write_csv_rows(fh: IO[str], rows: Iterable[Mapping[str, Any]],
                   columns: Sequence[str], *, lineterminator: str = "\r\n") -> int:
    """A header of exactly ``columns`` (also with no rows: a script reading an empty export
    must see the same columns), then one line per row, every cell through ``csv_cell``;
    returns how many rows. Each line is written as its row comes (``rows`` may be a
    generator over a streamed query): a year's export never sits whole in memory.
    Written here, not by ``csv.writer``: its minimal quoting cannot be told to quote ``;``
    (Python 3.11 has no per-cell quoting), and quoting every cell would change every line;
    Python's ``csv`` module reads the result back as the same values."""
    _write_csv_line(fh, columns, lineterminator)
    count, text, write = 0, _csv_text, fh.write
    for row in rows:
        get = row.get
        # A line of one empty cell is quoted, as csv.writer does: a blank line is no row.
        write((",".join([text(get(k)) for k in columns]) or '""') + lineterminator)
        count += 1
    return count


def _write_csv_line(fh: IO[str], cells: Sequence[Any], lineterminator: str) -> None:
    # A line of one empty cell is quoted, as csv.writer does: a blank line is no row.
    fh.write((",".join(map(_csv_field, cells)) or '""') + lineterminator)


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    return plain if plain is not value else str(value)


_ENCODER = json.JSONEncoder(indent=2, ensure_ascii=False, default=_json_default)


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as JSON text: non-ASCII kept readable, datetimes ISO 8601 in UTC, enums as
    their values. Plain ``json.dumps``: Rich's ``print_json`` took 19 s for 20,000 rows."""
    text = (_ENCODER.encode(data) if indent == 2 else
            json.dumps(data, indent=indent, ensure_ascii=False, default=_json_default))
    return _JSON_RAW_CONTROL.sub(_json_escape, text)


def _json_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def write_json_rows(fh: IO[str], rows: Iterable[Mapping[str, Any]], *, depth: int = 0) -> int:
    """``rows`` as a JSON array, the text ``json_text`` gives for the list of them, written
    one element as it comes (``rows`` may be a generator over a streamed query), at
    ``depth`` levels of indentation (1: the value of a top-level object's key); returns
    how many rows. A JSON text holds no raw line break but the indentation's, so each
    element's lines are indented by replacing them."""
    inner = "\n" + "  " * (depth + 1)
    count = 0
    for row in rows:
        element = json_text({k: _plain(v) for k, v in row.items()}).replace("\n", inner)
        fh.write(("[" if not count else ",") + inner + element)
        count += 1
    fh.write("\n" + "  " * depth + "]" if count else "[]")
    return count


def _cell(value: Any) -> Text:
    """A table cell. A ``Text``, not a string: cells are data (file names, error messages),
    never Rich markup or emoji codes, so "[red]x.png" and ":cd:" show as typed, and Rich
    skips parsing every cell as markup (a third of a 900-row table's rendering time); never
    terminal control either: ESC shows as \x1b (CSV cells too; JSON keeps the data as it
    is, its own escapes included)."""
    value = _plain(value)
    if value is None:
        return Text("-")
    if isinstance(value, float):
        return Text(f"{value:.3f}")
    return Text(without_control(str(value)))


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
    rows: Iterable[Mapping[str, Any]], fmt: str, *, keys: Sequence[str],
    columns: Sequence[str] | None = None, title: str | None = None,
    console: Console | None = None,
) -> int:
    """Print ``rows``; returns how many. JSON carries every key of each row; CSV exactly
    ``keys`` (the same header with no rows: a script reading an empty export must see the
    same columns); the table ``columns`` (default: ``keys``). CSV and JSON are written
    row by row as ``rows`` yields them (a generator over a streamed query keeps memory
    flat however many rows); a table needs them all first (a page of them)."""
    out = console or default_console()
    if fmt == "json":
        count = write_json_rows(out.file, rows)
        out.file.write("\n")
        return count
    if fmt == "csv":
        return write_csv_rows(out.file, rows, keys, lineterminator="\n")
    shown = list(columns or keys)
    table = Table(title=title, show_lines=False)
    for key in shown:
        table.add_column(key, overflow="fold")
    count = 0
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k in shown))
        count += 1
    out.print(table)
    return count
