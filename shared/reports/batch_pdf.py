"""The batch summary as a PDF: the same content as the HTML page, for print and records."""

from __future__ import annotations

from pathlib import Path

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


def _chart_grid(charts: dict[str, bytes]) -> Table:
    cells = [scaled_image(png, PAGE_WIDTH / 2 - 4 * mm) for png in charts.values()]
    return Table([cells[i:i + 2] for i in range(0, len(cells), 2)], hAlign="LEFT")


def _failures(summary: BatchSummary) -> list[Flowable]:
    if not summary.failures:
        return [para("None.")]
    note = failures_note(summary)
    return [table(FAILURE_REASON_COLUMNS, failure_reason_rows(summary),
                  widths=(30 * mm, 16 * mm, 134 * mm)),
            table(FAILURE_COLUMNS, failure_rows(summary),
                  widths=(16 * mm, 40 * mm, 30 * mm, 94 * mm)),
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
        para(worklist_heading(summary), HEADING),
        table(WORKLIST_COLUMNS, [worklist_table_row(r) for r in summary.worklist],
              widths=(10 * mm, 38 * mm, 16 * mm, 20 * mm, 20 * mm, 18 * mm, 30 * mm, 28 * mm))
        if summary.worklist else para(no_worklist_text(summary)),
    ]
    return build_pdf(path, batch_title(summary), story)
