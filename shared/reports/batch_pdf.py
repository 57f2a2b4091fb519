"""The batch summary as a PDF: the same content as the HTML page, for print and records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reportlab.lib.units import mm
from reportlab.platypus import Flowable, KeepTogether, Table

from shared.reports.batch_data import BatchSummary
from shared.reports.charts import batch_charts
from shared.reports.layout import (
    FAILURE_COLUMNS,
    FAILURE_REASON_COLUMNS,
    NO_STAGE_TIMES,
    WORKLIST_COLUMNS,
    batch_title,
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
from shared.reports.pdf_parts import (
    HEADING,
    PAGE_WIDTH,
    TITLE,
    build_pdf,
    disclaimer,
    para,
    scaled_image,
    table,
)

# Each column is wide enough for its longest word that must not break ("rank", "suspicion",
# "incomplete", "P(malignant)", "default:1.8.0", "image_id", the longest error code) at the
# tables' 7.5 pt, plus a cell's padding (reportlab's 6 pt a side); free text (flags, paths,
# messages) takes the rest.
FAILURE_WIDTHS = (17 * mm, 38 * mm, 43 * mm, 82 * mm)
FAILURE_REASON_WIDTHS = (43 * mm, 16 * mm, 121 * mm)
# The read-first table without its study_uid and report columns: each row's UID (or
# image and file) and report path have a line of their own.
_OWN_LINE = ("study_uid", "report")
EXAM_COLUMNS = tuple(c for c in WORKLIST_COLUMNS if c not in _OWN_LINE)
EXAM_WIDTHS = (11 * mm, 17.5 * mm, 22 * mm, 22 * mm, 22 * mm, 22 * mm, 20 * mm, 43.5 * mm)


def _own_line(row: dict[str, Any], identity: str, report: str) -> str:
    name = f"study_uid: {identity}" if row["study_uid"] is not None else identity
    return name if report == "-" else f"{name} - report: {report}"


def worklist_table(summary: BatchSummary) -> Flowable:
    """The read-first exams (and images read alone), each on two lines: its scores, then its
    study UID across the page. In a column of its own a UID broke inside a number ("...8.4"
    over "98.777"): it read as another UID and was copied wrong; a 64-character UID fits
    the page's width."""
    if not summary.worklist:
        return para(no_worklist_text(summary))
    own_at = [WORKLIST_COLUMNS.index(c) for c in _OWN_LINE]
    rows: list[list[Any]] = []
    style: list[tuple[Any, ...]] = []
    for row in summary.worklist:
        every = worklist_table_row(row)
        cells = [c for at, c in enumerate(every) if at not in own_at]
        line = _own_line(row, *(every[at] for at in own_at))
        rows += [cells, [line] + [""] * (len(cells) - 1)]
        at = len(rows)  # the UID's line (the header is line 0)
        style += [("SPAN", (0, at), (-1, at)), ("NOSPLIT", (0, at - 1), (-1, at))]
    return table(EXAM_COLUMNS, rows, widths=EXAM_WIDTHS, style=style)


def _chart_grid(charts: dict[str, bytes]) -> Table:
    cells = [scaled_image(png, PAGE_WIDTH / 2 - 4 * mm) for png in charts.values()]
    return Table([cells[i:i + 2] for i in range(0, len(cells), 2)], hAlign="LEFT")


def _failures(summary: BatchSummary) -> list[Flowable]:
    if not summary.failures:
        return [para("None.")]
    note = failures_note(summary)
    return [table(FAILURE_REASON_COLUMNS, failure_reason_rows(summary),
                  widths=FAILURE_REASON_WIDTHS),
            table(FAILURE_COLUMNS, failure_rows(summary), widths=FAILURE_WIDTHS),
            *([para(note)] if note else [])]


def write_summary_pdf(summary: BatchSummary, path: Path) -> Path:
    charts = batch_charts(summary.by_state, summary.by_class, summary.suspicion_counts,
                          summary.per_day)
    story: list[Flowable] = [
        para(batch_title(summary), TITLE), disclaimer(),
        para("Overview", HEADING), table(None, overview_rows(summary)),
        para("Counts", HEADING),
        table(("state", "images"), summary.by_state.items()),
        table(("predicted class", "images"), summary.by_class.items()),
        para("Charts", HEADING), _chart_grid(charts),
        # A heading never ends a page alone.
        KeepTogether([para("Throughput (per image)", HEADING),
                      table(("stage", "median ms", "mean ms"), stage_rows(summary))
                      if summary.stage_times else para(NO_STAGE_TIMES)]),
        para(failures_heading(summary), HEADING), *_failures(summary),
        para(worklist_heading(summary), HEADING), worklist_table(summary),
    ]
    return build_pdf(path, batch_title(summary), story)
