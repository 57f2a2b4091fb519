"""One renderer for every listing command: ``--format table|csv|json``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS = ("table", "csv", "json")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    # Cells are data (file names, error messages), never Rich markup: "[red]x.png" must
    # show as typed.
    return escape(str(value))


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
        out.print_json(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows]))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(keys), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row.get(k)) for k in keys})
        out.file.write(buffer.getvalue())
        return
    shown = list(columns or keys)
    table = Table(title=title, show_lines=False)
    for key in shown:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k in shown))
    out.print(table)
