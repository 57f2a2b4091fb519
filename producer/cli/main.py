"""The ``mammo`` group: settings, logging, and one-line errors with named exit codes."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from sqlalchemy.exc import DatabaseError

from producer.cli.context import CliContext
from producer.cli.exit_codes import ExitCode, exit_code_for
from shared.config import LOG_LEVELS, load_settings
from shared.db.engine import failed_command_as_error
from shared.errors import UserFacingError
from shared.extras import missing_extra_error

# Reports, exports and the SQLite database hold accession numbers, pseudonyms, results and
# source paths (PACS exports often build these from patient names): no file we write is
# readable by other users. Group read is left, so that a group (the reading room's) can be
# granted the reports (README, "Who can read the reports").
PRIVATE_UMASK = 0o027


def keep_files_private() -> None:
    """Tighten the process umask to at least ``PRIVATE_UMASK``, never loosening a stricter
    one. Every command, the workers' pool processes and the embedded run inherit it."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


class MammoGroup(click.Group):
    """Turns errors a person can fix into one red line and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserFacingError as exc:
            self._fail(ctx, exc)
        except DatabaseError as exc:
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
        except KeyboardInterrupt:
            click.secho("interrupted: queued work is kept in the database; run the same "
                        "command again, or `mammo recover`, to finish it.", err=True, fg="yellow")
            ctx.exit(ExitCode.INTERRUPTED)

    @staticmethod
    def _fail(ctx: click.Context, exc: UserFacingError) -> None:
        click.secho(f"error: {exc}", err=True, fg="red")
        ctx.exit(exit_code_for(exc))


@click.group(cls=MammoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Override MAMMO_LOG_LEVEL for this command.")
@click.version_option(package_name="mammo-pipeline", prog_name="mammo")
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
    keep_files_private()
    overrides: dict[str, object] = {"log_level": log_level} if log_level else {}
    settings = load_settings(**overrides)
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Migration chatter and TensorFlow's C++ banner are noise on a terminal.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = CliContext(settings)


def _register() -> None:
    from producer.cli import (
        commands_db,
        commands_model,
        commands_query,
        commands_report,
        commands_run,
        commands_submit,
        commands_watch,
        commands_worker,
    )

    for module in (commands_run, commands_submit, commands_worker, commands_watch,
                   commands_query, commands_report, commands_db, commands_model):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="mammo")
