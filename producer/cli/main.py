"""The ``mammo`` group: settings, logging, and one-line errors with named exit codes."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from producer.cli.exit_codes import ExitCode, exit_code_for
from shared.config import LOG_LEVELS, load_settings
from shared.errors import UserFacingError
from shared.extras import missing_extra_error
from shared.logs import configure_logging

if TYPE_CHECKING:
    from sqlalchemy.exc import DatabaseError

# Reports, exports and the SQLite database hold accession numbers, pseudonyms, results and
# source paths (PACS exports often build these from patient names): no file we write is
# readable by other users. Group read is left, so that a group (the reading room's) can be
# granted the reports (README, "Who can read the reports").
PRIVATE_UMASK = 0o027


def keep_files_private() -> None:
    """Tighten the process umask to at least ``PRIVATE_UMASK``, never loosening a stricter
    one. Every command, the workers' pool processes and the embedded run inherit it."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


class Entry(NamedTuple):
    module: str  # under producer.cli
    summary: str  # the first paragraph of the command's help: `mammo --help` shortens it


# Every command, and where it lives. A command's module is imported only when that command
# runs (or shows its own --help): `mammo status` from cron need not load pydicom, OpenCV or
# TensorFlow's neighbours first. `mammo --help` lists the summaries without importing any
# module; tests/unit/test_cli_lazy.py checks the table against the real commands.
COMMANDS: dict[str, Entry] = {
    "db": Entry("commands_db", "Database maintenance."),
    "demo": Entry("commands_run", "Synthesise mammogram-like DICOM exams (labelled SYNTHETIC) "
                                  "and run the pipeline."),
    "evaluate": Entry("commands_model", "Score labelled DATA with a model; print accuracy, "
                                        "AUCs, ECE and every prediction."),
    "models": Entry("commands_model", "List, inspect and activate model versions."),
    "recover": Entry("commands_db", "Re-queue images whose wake-up message was lost (Redis "
                                    "restarted, worker killed)."),
    "report": Entry("commands_report", "Write a report to a file: one exam, one image, one "
                                       "batch, the worklist, or the statistics."),
    "rescore": Entry("commands_db", "Score done images again with the model now in use (after "
                                    "`mammo models activate`)."),
    "results": Entry("commands_query", "Stored results, one row per image (the latest "
                                       "prediction of each)."),
    "run": Entry("commands_run", "Queue PATHS (files or folders) and process them now, in this "
                                 "process."),
    "stats": Entry("commands_report", "Totals, class distribution, average confidence, "
                                      "predictions per day, failure rate by reason, and the "
                                      "active model's validation metrics."),
    "status": Entry("commands_query", "Counts per state, throughput and ETA per batch; then "
                                      "the system's health."),
    "submit": Entry("commands_submit", "Queue PATHS (files or folders) for the workers and "
                                       "print the batch id."),
    "train": Entry("commands_model", "Train, cross-validate, calibrate and write a model "
                                     "directory with its model card."),
    "watch": Entry("commands_watch", "Watch DIRECTORY (recursively) and queue every complete "
                                     "image written into it."),
    "worker": Entry("commands_worker", "Start a worker that consumes chunks from the broker "
                                       "until stopped (SIGTERM: warm)."),
    "worklist": Entry("commands_report", "The read-first list: exams by suspicion, highest "
                                         "first, with each image scored outside any exam (no "
                                         "study ID) as a row of its own, flagged as read "
                                         "alone."),
}


def load_command(name: str) -> click.Command:
    """The real command ``name``, importing its module (and that module's imports)."""
    module = importlib.import_module(f"producer.cli.{COMMANDS[name].module}")
    return next(command for command in module.COMMANDS if command.name == name)


def _database_error() -> type[DatabaseError]:
    # Only evaluated once an exception is on its way out: sqlalchemy is not loaded for
    # `mammo --version` or `--help`.
    from sqlalchemy.exc import DatabaseError

    return DatabaseError


class MammoGroup(click.Group):
    """Turns errors a person can fix into one red line and a named exit code; imports a
    command's module only when that command is used (click's lazy-loading group)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click draws its "Did you mean" from the commands loaded so far: name them all.
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=COMMANDS, ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click.Group's own listing, from COMMANDS' summaries instead of the loaded commands.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=COMMANDS[name].summary).get_short_help_str(limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserFacingError as exc:
            self._fail(ctx, exc)
        except _database_error() as exc:
            from shared.db.engine import failed_command_as_error

            # Reached, then refused or found corrupted mid-command: no code path can go on,
            # and none is a bug (an IntegrityError is, and keeps its traceback).
            error = failed_command_as_error(ctx.obj.settings.database_url, exc)
            if error is None:
                raise
            self._fail(ctx, error)
        except ModuleNotFoundError as exc:
            # The commands import their heavy parts when first used: one of an extra that
            # this install lacks (`mammo train` without `.[worker]`) is a setup step, not a bug.
            missing = missing_extra_error(exc, f"`mammo {ctx.invoked_subcommand}`")
            if missing is None:
                raise
            self._fail(ctx, missing)
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise
            # `mammo results | head`: the reader stopped early by choice; the listing is not
            # a failed job (click would exit 1, this CLI's "a bug"). Later writes and the
            # interpreter's last flush go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(ExitCode.OK)
        except KeyboardInterrupt:
            click.secho("interrupted: queued work is kept in the database; run the same "
                        "command again, or `mammo recover`, to finish it.", err=True, fg="yellow")
            ctx.exit(ExitCode.INTERRUPTED)

    @staticmethod
    def _fail(ctx: click.Context, exc: UserFacingError) -> None:
        click.secho(f"error: {exc}", err=True, fg="red")
        ctx.exit(exit_code_for(exc))


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has closed it (poll says POLLERR),
    so that a broken pipe to a server is never mistaken for `| head`."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


@click.group(cls=MammoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Override MAMMO_LOG_LEVEL for this command.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _, shown: _print_version(ctx) if shown else None,
              help="Show the release, its readers' version and its database schema, and exit.")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Mammogram batch classification: queue, classify, store and report.

    Decision support only: results are probabilities for a radiologist to weigh, never a
    diagnosis.

    \b
    Example (no servers needed):
        mammo demo
        mammo run /path/to/mammograms/
    """
    # Imported here, not at the top: `mammo --version` and `--help` need no database.
    from producer.cli.context import CliContext

    keep_files_private()
    overrides: dict[str, object] = {"log_level": log_level} if log_level else {}
    settings = load_settings(**overrides)
    configure_logging(settings.log_level)  # UTC times, labelled: as every other time shown
    # Migration chatter and TensorFlow's C++ banner are noise on a terminal.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = CliContext(settings)


def _print_version(ctx: click.Context) -> None:
    """What tells two installs apart when a centre upgrades host by host: the package
    version stays the same across builds of one release, while the reader version (what
    `mammo rescore --reread` compares) and the schema heads (what `mammo db upgrade`
    migrates to, and which databases this install can open) say what it reads and
    writes. No database is opened."""
    from importlib.metadata import version

    from shared.db.engine import head_revisions
    from shared.imaging.reader_version import READER_VERSION

    click.echo(f"mammo, version {version('mammo-pipeline')} (readers {READER_VERSION}, "
               f"database schema {'+'.join(sorted(head_revisions()))})")
    ctx.exit(0)


def main() -> None:
    cli(prog_name="mammo")
