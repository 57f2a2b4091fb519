"""The batch summary as one self-contained HTML file: charts are PNG data URIs, styles are
inline, nothing is fetched, so it opens offline and survives being attached to an email."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from shared.reports.batch_data import BatchSummary
from shared.reports.charts import batch_charts
from shared.reports.exports import DISCLAIMER
from shared.reports.layout import (
    FAILURE_COLUMNS,
    FAILURE_REASON_COLUMNS,
    NO_STAGE_TIMES,
    WORKLIST_COLUMNS,
    batch_title,
    cell_text,
    failure_reason_rows,
    failure_rows,
    failures_heading,
    failures_note,
    no_worklist_text,
    overview_rows,
    stage_rows,
    worklist_heading,
    worklist_table_row,
)

_STYLE = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f2f2f2}
.disclaimer{background:#fff4d6;border:1px solid #e0b84a;padding:.6em 1em;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0}
.charts img{max-width:26em}figcaption{font-size:.85em;color:#555}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell_text(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(charts: Mapping[str, bytes]) -> str:
    return "".join(
        f'<figure><img alt="{escape(title)}" src="{data_uri(png)}">'
        f"<figcaption>{escape(title)}</figcaption></figure>" for title, png in charts.items())


def _failures(summary: BatchSummary) -> str:
    if not summary.failures:
        return "<p>None.</p>"
    note = failures_note(summary)
    return (_table(FAILURE_REASON_COLUMNS, failure_reason_rows(summary))
            + _table(FAILURE_COLUMNS, failure_rows(summary))
            + (f"<p>{escape(note)}</p>" if note else ""))


def render_summary_html(summary: BatchSummary) -> str:
    charts = batch_charts(summary.by_state, summary.by_class, summary.suspicion_counts,
                          summary.per_day)
    title = batch_title(summary)
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="disclaimer">{escape(DISCLAIMER)}</p>',
        "<h2>Overview</h2>", _table(("", "value"), overview_rows(summary)),
        "<h2>Counts by state</h2>", _table(("state", "images"), summary.by_state.items()),
        "<h2>Counts by predicted class</h2>",
        _table(("class", "images"), summary.by_class.items()),
        f'<h2>Charts</h2><div class="charts">{_figures(charts)}</div>',
        "<h2>Throughput</h2>", _table(("stage", "median ms / image", "mean ms / image"),
                                      stage_rows(summary))
        if summary.stage_times else f"<p>{NO_STAGE_TIMES}</p>",
        f"<h2>{escape(failures_heading(summary))}</h2>", _failures(summary),
        f"<h2>{escape(worklist_heading(summary))}</h2>",
        _table(WORKLIST_COLUMNS, [worklist_table_row(r) for r in summary.worklist])
        if summary.worklist else f"<p>{escape(no_worklist_text(summary))}</p>",
        f'<p class="disclaimer">{escape(DISCLAIMER)}</p>',
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
