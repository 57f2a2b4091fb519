"""``mammo worklist``, ``mammo stats`` and ``mammo report``: what the clinic reads."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from producer.cli.commands_query import TABLE_PAGE
from producer.cli.context import CliContext, pass_cli
from producer.cli.options import date_range_options, format_option, utc_range
from producer.cli.progress import STDERR
from shared.formatting import json_text, render
from shared.queries import require_batch
from shared.reports.exports import DISCLAIMER

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.reports.targets import ReportRequest

# A row read alone (no exam) has no study_uid: its image_id and source name it. The exam's
# validated score stands beside the ranking one (a breast's own views may rank it higher).
WORKLIST_COLUMNS = ("rank", "priority", "study_uid", "image_id", "source", "patient_pseudonym",
                    "study_date", "suspicion", "exam_suspicion", "left", "right", "label",
                    "p_malignant", "models", "status", "flags", "report_path")
_KINDS = ("exam", "image", "batch", "worklist", "stats")
_ALL_FORMATS = ("pdf", "html", "csv", "json")


@click.command("worklist")
@click.option("--batch", "batch_id", type=int, help="Only exams with an image in this batch.")
@date_range_options
@click.option("--limit", type=click.IntRange(1), default=None,
              help=f"At most this many exams [default: all; the table shows at most "
                   f"{TABLE_PAGE}].")
@click.option("--write-reports", is_flag=True,
              help="Also write each listed exam's PDF where report_path points, and each "
                   "listed image outside any exam's image PDF (the rows shown: a table's "
                   "page, --limit's, or all as csv|json).")
@format_option
@pass_cli
def worklist_command(cli: CliContext, batch_id: int | None, since: datetime | None,
                     until: datetime | None, limit: int | None, write_reports: bool,
                     fmt: str) -> None:
    """The read-first list: exams by suspicion, highest first, with each image scored
    outside any exam (no study ID) as a row of its own, flagged as read alone.

    Exams whose missing views timed out get their (incomplete) result first, even when no
    watcher or worker is running. report_path is the exam's PDF, when it has been written
    (by `mammo run`, `--write-reports` or `mammo report exam`); for an image outside any
    exam, the image's PDF (`--write-reports` or `mammo report image`). The list ends by saying how
    many exams it leaves out because a view is still queued or processing, or because they
    wait for missing views until the exam timeout (on stderr for csv/json, whose rows stay
    data).

    \b
    Example:
        mammo worklist --batch 42
        mammo worklist --since 2026-11-24 --format json > read-first.json
    """
    from shared.exams import refresh_due_exams
    from shared.reports.exam_reports import write_exam_report, write_image_report
    from shared.reports.worklist import (
        FLAT_WORKLIST_KEYS,
        WorklistFilter,
        count_worklist,
        exam_pdf_path,
        flat_worklist_row,
        image_pdf_path,
        iter_worklist,
        unlisted_exams,
    )

    settings = cli.settings
    # A terminal table of every exam ever stored took 15 s to print and could not be read.
    page = limit or (TABLE_PAGE if fmt == "table" else None)
    flt = WorklistFilter(batch_id, *utc_range(since, until), page)
    with cli.sessions() as session:
        if batch_id is not None:
            require_batch(session, batch_id)
        refresh_due_exams(session, timeout_s=settings.exam_timeout_s)
        if write_reports:
            # First, so that the rows' report paths and flags ("the exam PDF predates this
            # result") describe the PDFs just written, not the ones they replaced.
            listed = [(row["study_uid"], row["image_id"]) for row in iter_worklist(
                session, flt, report_dir=settings.report_dir)]
            for study_uid, image_id in listed:
                if study_uid is None:  # an image outside any exam: the image's own PDF
                    write_image_report(session, image_id,
                                       image_pdf_path(settings.report_dir, image_id), "pdf",
                                       settings)
                    continue
                path = exam_pdf_path(settings.report_dir, study_uid)
                write_exam_report(session, study_uid, path, "pdf", settings)
        # CSV and JSON are written as the rows are read, a block at a time: memory stays
        # flat however many exams.
        rows = iter_worklist(session, flt, report_dir=settings.report_dir)
        shown = render(rows if fmt == "json" else map(flat_worklist_row, rows), fmt,
                       keys=FLAT_WORKLIST_KEYS, columns=WORKLIST_COLUMNS,
                       title="Read first (decision support: suspicion 1-10, not a diagnosis)")
        total = count_worklist(session, flt) if page and shown == page else shown
        unlisted = unlisted_exams(session, flt, timeout_s=settings.exam_timeout_s)
    for note in filter(None, [_more_exams_note(shown, total, limit), unlisted.note()]):
        # Under the table; on stderr for csv/json, whose stdout stays the rows alone.
        click.echo(note, err=fmt != "table")


def _more_exams_note(shown: int, total: int, limit: int | None) -> str | None:
    if shown >= total:
        return None
    if limit:
        return f"the first {shown} of {total} exams (--limit {limit})"
    return (f"the first {shown} of {total} exams: --limit N shows more, --format csv|json "
            "lists them all, and --batch or --since/--until narrow the list")


@click.command("stats")
@click.option("--batch", "batch_id", type=int, help="Only images of this batch.")
@date_range_options
@format_option
@pass_cli
def stats_command(cli: CliContext, batch_id: int | None, since: datetime | None,
                  until: datetime | None, fmt: str) -> None:
    """Totals, class distribution, average confidence, predictions per day, failure rate by
    reason, and the active model's validation metrics.

    Average confidence is the mean of each image's highest class probability (latest
    prediction per image); it says how sure the model was, not how often it was right: the
    validation metrics say that.

    \b
    Example:
        mammo stats
        mammo stats --since 2026-11-01 --format json
    """
    from shared.reports.stats import StatsFilter, collect_stats, stats_rows
    from shared.reports.targets import stats_json

    with cli.sessions() as session:
        if batch_id is not None:
            require_batch(session, batch_id)
        stats = collect_stats(session, cli.settings,
                              StatsFilter(batch_id, *utc_range(since, until)))
    if fmt == "json":
        click.echo(json_text(stats_json(stats)))
        return
    render(stats_rows(stats), fmt, keys=("section", "key", "value"), title="Statistics")


@click.command("report")
@click.argument("kind", type=click.Choice(_KINDS))
@click.argument("target", required=False)
@click.option("--format", "fmt", type=click.Choice(_ALL_FORMATS), default=None,
              help="exam, image: pdf|json; batch: pdf|html|csv|json; worklist, stats: "
                   "csv|json [default: the first of these].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write [default: under MAMMO_REPORT_DIR].")
@date_range_options
@pass_cli
def report_command(cli: CliContext, kind: str, target: str | None, fmt: str | None,
                   output: Path | None, since: datetime | None, until: datetime | None) -> None:
    """Write a report to a file: one exam, one image, one batch, the worklist, or the
    statistics.

    TARGET is the exam's StudyInstanceUID (exam), the image's id (image: image_id in
    `mammo results` and `mammo worklist`), the batch number (batch), or an optional batch
    number that narrows the worklist or statistics. --since/--until narrow the worklist and
    statistics by submission time (an exam, image or batch report is always whole).

    An image report shows one image as the exam PDF shows a view: the image with its
    heatmap, probabilities, suspicion, label, model and flags; for an image outside any
    exam (a PNG without a manifest study_id, a mini-MIAS file) it is the only report with
    its heatmap. For an image of an exam it names the exam, whose report reads the image
    against the other breast. Written by default to MAMMO_REPORT_DIR/exams/image-ID.pdf.

    \b
    Example:
        mammo report exam 1.2.826.0.1.3680043.8.498.123 --format pdf -o exam.pdf
        mammo report image 17
        mammo report image 17 --format json -o image-17.json
        mammo report batch 3 --format html -o night-24.html
        mammo report worklist 3 --format csv -o read-first.csv
        mammo report stats --format json -o stats.json
    """
    from shared.reports.targets import (
        FORMATS_BY_KIND,
        RANGED_KINDS,
        ReportRequest,
        formats_of,
        report_name,
        write_report,
    )

    allowed = FORMATS_BY_KIND[kind]
    fmt = fmt or allowed[0]
    if fmt not in allowed:
        raise click.BadParameter(formats_of(kind), param_hint="--format")
    if (since or until) and kind not in RANGED_KINDS:
        raise click.BadParameter(
            f"--since/--until narrow the {' and '.join(RANGED_KINDS)} reports only; "
            f"{report_name(kind)} covers the whole {kind}",
            param_hint="'--since' / '--until'")
    request = ReportRequest(kind, fmt, target, *utc_range(since, until))
    with cli.sessions() as session:
        written = write_report(session, request, output, cli.settings)
        unlisted = (_unlisted_note(session, request, cli.settings.exam_timeout_s)
                    if kind == "worklist" else None)
    click.echo(str(written))
    # On stderr, as `mammo run` does: stdout stays the path alone, for scripts. The CSV
    # files cannot carry the statement (a comment line is not CSV); the others carry it too.
    STDERR.print(DISCLAIMER, style="italic", soft_wrap=True)
    if unlisted:
        click.echo(unlisted, err=True)


def _unlisted_note(session: Session, request: ReportRequest, timeout_s: float) -> str | None:
    """What `mammo worklist` says of the exams it cannot list yet, for the worklist file."""
    from shared.reports.worklist import WorklistFilter, unlisted_exams

    flt = WorklistFilter(request.batch_id(), request.since, request.until)
    return unlisted_exams(session, flt, timeout_s=timeout_s).note()


COMMANDS = (worklist_command, stats_command, report_command)
