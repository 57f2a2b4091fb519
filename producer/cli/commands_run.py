"""``mammo run`` and ``mammo demo``: the embedded one-shot job, no servers needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from producer.cli.commands_submit import (
    lock_wait_notices,
    manifest_option,
    nothing_to_do,
    say_skipped,
)
from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from producer.cli.interrupts import sigterm_as_ctrl_c
from producer.cli.options import batch_name_option, format_option, paths_argument
from producer.cli.progress import STDERR, completion_bar, file_counter, quiet_embedded_logs
from producer.embedded_run import RunOutcome, check_model, prepare_run
from producer.submission import SubmitOutcome
from shared.config import Settings
from shared.db.clock import Clocks
from shared.db.schema import Batch
from shared.enums import ImageState
from shared.errors import ConfigurationError
from shared.extras import WORKER, require
from shared.formatting import render
from shared.queries import (
    RESULT_KEYS,
    ResultFilter,
    finished_batches_copied_from,
    list_results,
)
from shared.reports.batch_outputs import BatchDocuments, write_batch_documents
from shared.reports.batch_summary import batch_report_path
from shared.reports.exports import DISCLAIMER
from shared.reports.output import check_report_folder
from shared.timeutil import as_utc

SUMMARY_COLUMNS = ("image_id", "file", "state", "duplicate_of", "laterality", "view", "label",
                   "suspicion", "p_malignant", "error_code")


@dataclass(frozen=True)
class RunListing:
    outcome: RunOutcome
    rows: list[dict[str, Any]]  # one per file given, copies with their original's result

    @property
    def any_failed(self) -> bool:
        """A failed file in the listing, a copy of an earlier failure included: the exit
        code says what the table shows."""
        return any(row["state"] == ImageState.FAILED.value for row in self.rows)


def _run_and_report(cli: CliContext, paths: tuple[Path, ...], name: str | None, fmt: str,
                    report_dir: Path | None, manifest: Path | None = None) -> RunListing:
    quiet_embedded_logs()
    settings = cli.settings.model_copy(update={"report_dir": report_dir or cli.settings.report_dir})
    # Before any work: a folder it cannot write ended the run only after every image.
    check_report_folder(settings.report_dir)
    prepared = prepare_run(cli.settings, cli.sessions, manifest=manifest)
    with lock_wait_notices(cli):
        with file_counter("reading headers") as on_file:
            registered = prepared.register(paths, name=name, on_file=on_file)
        with STDERR.status("loading the model"):
            prepared.load_model(registered)
        with completion_bar("classifying") as progress:
            result = prepared.process(registered, progress=progress)
    sub = result.submission
    with cli.sessions() as session:
        # Copies of images already submitted are listed too, with their original's result:
        # a re-run of a folder shows what is known about every file it was given.
        rows = list_results(session, ResultFilter(batch_id=sub.batch_id,
                                                  include_duplicates=True))
    shown = rows if fmt != "table" else [{**r, "file": Path(r["source"]).name} for r in rows]
    render(shown, fmt, keys=RESULT_KEYS, columns=SUMMARY_COLUMNS, title=f"Batch {sub.batch_id}")
    STDERR.print(f"batch {sub.batch_id}: {_file_counts(sub)}; {_pace(result)}")
    say_skipped(sub.skipped)
    _say_documents("reports", _write_documents(cli, sub.batch_id, settings))
    _report_earlier_batches(cli, sub.batch_id, settings)
    STDERR.print(DISCLAIMER, style="italic")
    return RunListing(result, rows)


def _pace(result: RunOutcome) -> str:
    if not result.submission.waiting_on:
        return "nothing to classify (the model was not loaded)"
    return (f"{rate_text(result.images_per_s)} images/s after a model load of "
            f"{result.model_load_seconds:.1f} s")


def _write_documents(cli: CliContext, batch_id: int, settings: Settings) -> BatchDocuments:
    """The batch's reports, with a bar over its exam (and image) PDFs: a night's take
    minutes."""
    with cli.sessions() as session, completion_bar("writing exam PDFs") as progress:
        return write_batch_documents(session, batch_id, settings, progress=progress)


def _report_earlier_batches(cli: CliContext, batch_id: int, settings: Settings) -> None:
    """The reports of the earlier batches these files were first given to, once finished,
    when theirs are missing or predate the finish: an interrupted run's batch never wrote
    them, and a re-run's own batch (its copies) holds no result of its own to summarise."""
    with cli.sessions() as session:
        clocks = Clocks.read(session)
        due = [b.id for b in finished_batches_copied_from(session, batch_id)
               if not _summary_is_current(settings, b, clocks)]
    for earlier in due:
        documents = _write_documents(cli, earlier, settings)
        _say_documents(f"batch {earlier} (these files' first run) is finished; its reports",
                       documents)


def _summary_is_current(settings: Settings, batch: Batch, clocks: Clocks) -> bool:
    """Whether the batch's summary was written after it finished. The finish is stamped on
    the database's clock and the file's time on this host's: compared as they are, a
    summary written minutes before the finish on a host as far ahead read as current, and
    the finished batch kept a summary of its unfinished state."""
    summary = batch_report_path(settings, batch.id, "html")
    finished = as_utc(batch.finished_at)
    return (summary.is_file() and finished is not None
            and clocks.written_after(summary, finished))


def _say_documents(what: str, documents: BatchDocuments) -> None:
    exam_pdfs = documents.exams
    STDERR.print(f"{what}: {documents.summary} (open in a browser), "
                 f"{', '.join(str(p) for p in documents.exports)}"
                 + (f"; {_pdf_count(exam_pdfs)} in {exam_pdfs[0].parent}" if exam_pdfs
                    else ""))


def _pdf_count(pdfs: list[Path]) -> str:
    """"4 exam PDF(s)", "2 exam PDF(s) and 3 image PDF(s)": an image read alone has its
    own (``image_pdf_path``)."""
    images = sum(1 for pdf in pdfs if pdf.name.startswith("image-"))
    return " and ".join(f"{n} {kind} PDF(s)" for n, kind in
                        ((len(pdfs) - images, "exam"), (images, "image")) if n)


def _file_counts(sub: SubmitOutcome) -> str:
    """The files given, counted once each: the images resumed here (an interrupted run's)
    are among the copies, so they are a part of that count, not added to it."""
    resumed = (f" ({len(sub.requeued)} of them unfinished, finished in this run)"
               if sub.requeued else "")
    return (f"{sub.files} file(s): {len(sub.queued) - len(sub.reregistered)} new, "
            f"{reregistered_text(sub)}{len(sub.duplicates)} already submitted{resumed}, "
            f"{len(sub.rejected)} rejected at intake"
            + (f", {len(sub.skipped)} skipped (not read)" if sub.skipped else ""))


def reregistered_text(sub: SubmitOutcome) -> str:
    """"2 re-registered with their manifest rows and scored again, ": files whose images
    were read before with inferred metadata (their name, or none), which their manifest
    rows corrected (``registration._correct_inferred``); empty when none."""
    count = len(sub.reregistered)
    if not count:
        return ""
    rows = "its manifest row" if count == 1 else "their manifest rows"
    return f"{count} re-registered with {rows} and scored again, "


@click.command("run")
@paths_argument
@batch_name_option
@click.option("--report-dir", type=click.Path(path_type=Path),
              help="Where to write the batch report [default: MAMMO_REPORT_DIR].")
@manifest_option
@format_option
@pass_cli
def run_command(cli: CliContext, paths: tuple[Path, ...], name: str | None,
                report_dir: Path | None, manifest: Path | None, fmt: str) -> None:
    """Queue PATHS (files or folders) and process them now, in this process.

    Uses the configured database (SQLite by default) and a local in-memory queue: no Redis
    and no worker processes are needed. Files already processed are skipped. Exits 3 when
    some images failed (each with its reason in the table).

    \b
    Example:
        mammo run /data/screening/2026-11-24/ --name night-24
    """
    if nothing_to_do(cli.settings, paths) is not None:
        if fmt != "table":  # a script still reads a well-formed, empty listing
            render([], fmt, keys=RESULT_KEYS)
        raise SystemExit(ExitCode.OK)
    check_model(cli.settings, cli.sessions)
    with sigterm_as_ctrl_c():  # a scheduler's stop ends the run as Ctrl-C does
        result = run_and_exit_code(cli, paths, name, fmt, report_dir, manifest)
    raise SystemExit(result)


def run_and_exit_code(cli: CliContext, paths: tuple[Path, ...], name: str | None, fmt: str,
                      report_dir: Path | None, manifest: Path | None = None) -> int:
    listing = _run_and_report(cli, paths, name, fmt, report_dir, manifest)
    failed = listing.outcome.submission.rejected or listing.any_failed
    return int(ExitCode.IMAGES_FAILED if failed else ExitCode.OK)


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("demo-data"),
              show_default=True, help="Where to write the synthetic DICOM files.")
@click.option("--exams", type=click.IntRange(1, 500), default=3, show_default=True,
              help="Number of synthetic 4-view exams.")
@click.option("--seed", type=int, default=2026, show_default=True)
@format_option
@pass_cli
def demo_command(cli: CliContext, directory: Path, exams: int, seed: int, fmt: str) -> None:
    """Synthesise mammogram-like DICOM exams (labelled SYNTHETIC) and run the pipeline.

    One deliberately truncated file is included to show how a bad input ends: failed, with
    its reason, while every other image is processed.

    \b
    Example:
        mammo demo --exams 5
    """
    from shared.synthetic import SYNTHETIC_LABEL, make_exam_set, write_truncated_copy

    require(WORKER, needed_for="`mammo demo`")  # before the demo files and the database
    check_model(cli.settings, cli.sessions)  # before writing anything
    try:
        files = make_exam_set(directory, n_exams=exams, seed=seed)
        files.append(write_truncated_copy(files[0], directory / "broken-transfer.dcm"))
    except OSError as exc:  # a read-only folder, a full disk
        raise ConfigurationError(
            f"Cannot write the synthetic demo files to {directory.resolve()}: "
            f"{exc.strerror or exc}. Choose a writable folder with --dir.") from exc
    STDERR.print(f"wrote {len(files)} synthetic files (not real patients) to {directory}")
    # Exactly the files written: anything else in the folder (a real mammogram dropped
    # there) must never be classified under a batch labelled synthetic.
    with sigterm_as_ctrl_c():
        _run_and_report(cli, tuple(files), f"demo-{seed}, {SYNTHETIC_LABEL}", fmt, None)


COMMANDS = (run_command, demo_command)


def rate_text(per_s: float) -> str:
    """A rate with its leading digits kept: a slow machine's 0.04 images/s printed "0.0"."""
    return f"{per_s:.1f}" if per_s >= 1 else f"{per_s:.2g}"
