"""``mammo submit``: queue files on the configured broker for ``mammo worker`` processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from producer.cli.context import CliContext, pass_cli
from producer.cli.options import batch_name_option, paths_argument
from producer.cli.progress import STDERR, file_counter
from producer.manifest import COLUMNS
from producer.submission import submit
from shared.enums import Priority
from shared.errors import ConfigurationError
from shared.queue import check_broker

manifest_option = click.option(
    "--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"CSV of metadata for files that carry none (PNG, JPEG, TIFF, PGM); columns "
    f"{','.join(COLUMNS)} (only path is required; paths relative to the CSV). Patient IDs "
    "need MAMMO_PATIENT_ID_KEY.")


def require_broker(cli: CliContext, command: str) -> None:
    if cli.settings.is_embedded:
        raise ConfigurationError(
            f"`mammo {command}` needs a broker: set MAMMO_BROKER_URL (e.g. "
            "redis://localhost:6379/0). Without servers, use `mammo run PATH` instead.")
    check_broker(cli.celery)


@click.command("submit")
@paths_argument
@batch_name_option
@click.option("--priority", type=click.Choice([p.value for p in Priority]),
              default=Priority.ROUTINE.value, show_default=True,
              help="Urgent batches are served before routine ones.")
@manifest_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@pass_cli
def submit_command(cli: CliContext, paths: tuple[Path, ...], name: str | None, priority: str,
                   manifest: Path | None, as_json: bool) -> None:
    """Queue PATHS (files or folders) for the workers and print the batch id.

    Reads headers only. Files already known (same SOPInstanceUID, or same bytes) are
    reported as duplicates and create no new work. Files that cannot be read are recorded
    as failed with their reason.

    \b
    Example:
        MAMMO_BROKER_URL=redis://localhost:6379/0 \\
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo \\
        mammo submit /data/screening/2026-11-24/ --name night-24
    """
    require_broker(cli, "submit")
    started = time.perf_counter()
    with file_counter("queueing") as on_file:
        outcome = submit(cli.settings, cli.sessions, cli.celery, paths, name=name,
                         priority=Priority(priority), on_file=on_file, manifest=manifest)
    seconds = time.perf_counter() - started
    summary: dict[str, int | float] = {
        "batch_id": outcome.batch_id, "files": outcome.files, "queued": len(outcome.queued),
        "duplicates": len(outcome.duplicates), "rejected": len(outcome.rejected),
        "messages": outcome.messages, "seconds": round(seconds, 3),
        "files_per_s": round(outcome.files / max(seconds, 1e-6), 1),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(outcome.batch_id)
    STDERR.print(
        f"batch {outcome.batch_id}: {summary['queued']} queued in {outcome.messages} tasks, "
        f"{summary['duplicates']} duplicates skipped, {summary['rejected']} rejected at "
        f"intake. Follow it with `mammo status {outcome.batch_id}`.")


COMMANDS = (submit_command,)
