"""``mammo submit``: queue files on the configured broker for ``mammo worker`` processes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from producer.cli.options import batch_name_option, paths_argument
from producer.cli.progress import STDERR, file_counter
from producer.discovery import OwnFiles, iter_files, source_text
from producer.manifest import COLUMNS
from producer.submission import submit
from shared.config import Settings
from shared.db.lock_wait import LockWaitNotices
from shared.enums import ImageState, Priority
from shared.errors import ConfigurationError
from shared.formatting import without_control
from shared.queue import broker_eviction, check_broker

manifest_option = click.option(
    "--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"CSV of metadata for files that carry none (PNG, JPEG, TIFF, PGM); columns "
    f"{','.join(COLUMNS)} (only path is required; paths relative to the CSV). Patient IDs "
    "need MAMMO_PATIENT_ID_KEY.")


# A folder of ten thousand named pipes must not flood the terminal: the first few tell why.
SKIPPED_SHOWN = 10


def say_skipped(skipped: list[tuple[Path, str]]) -> None:
    """One warning naming the files found in the folders given that were not read, and why:
    a file that silently is not in the batch looks like a file lost."""
    if not skipped:
        return
    named = "; ".join(f"{without_control(source_text(path), one_line=True)} ({why})"
                      for path, why in skipped[:SKIPPED_SHOWN])
    more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    STDERR.print(f"warning: skipped {len(skipped)} file(s) found in the folders given, not "
                 f"read: {named}{more}. To classify a linked file from elsewhere, name it on "
                 "the command line.", style="yellow", markup=False, highlight=False)


@dataclass(frozen=True)
class NothingToDo:
    """PATHS hold no image file to read: only hidden, temporary or skipped ones, or none."""

    skipped: list[tuple[Path, str]]


def nothing_to_do(settings: Settings, paths: tuple[Path, ...]) -> NothingToDo | None:
    """Says so and returns what was skipped when ``paths`` hold no file to register, before
    any batch is made: a night with no exams is not an error, and an empty batch (listed by
    `mammo status` for ever), a model load or a broker message would be waste. None when
    they hold one: a file refused at intake is registered, failed, with its reason."""
    skipped: list[tuple[Path, str]] = []
    found = iter_files(paths, own=OwnFiles.of(settings),
                       on_skip=lambda path, why: skipped.append((path, why)))
    if next(found, None) is not None:
        return None
    STDERR.print("nothing to do: no image files under "
                 f"{', '.join(str(p) for p in paths)} (hidden files and folders, and "
                 "temporary names, are skipped)")
    say_skipped(skipped)
    return NothingToDo(skipped)


def lock_wait_notices(cli: CliContext) -> LockWaitNotices:
    """Warnings on stderr while a statement of the command waits for another session's
    lock (an administrator's LOCK TABLE, a migration): the command keeps waiting, saying
    on what (``shared.db.lock_wait``)."""
    return LockWaitNotices(cli.engine, lambda line: STDERR.print(
        f"warning: {line}", style="yellow", markup=False, highlight=False))


def require_broker(cli: CliContext, command: str, *, warn_eviction: bool = True) -> None:
    """Reach the broker, or end the command; then warn once if Redis may evict the queue
    (``warn_eviction=False``: the caller, which may call this again, warns itself)."""
    if cli.settings.is_embedded:
        raise ConfigurationError(
            f"`mammo {command}` needs a broker: set MAMMO_BROKER_URL (e.g. "
            "redis://localhost:6379/0). Without servers, use `mammo run PATH` instead.")
    check_broker(cli.celery)
    if warn_eviction:
        warn_if_broker_evicts(cli)


def warn_if_broker_evicts(cli: CliContext, *, prefix: str = "warning: ") -> None:
    """One line on stderr when Redis's maxmemory-policy may evict the queue's keys (an
    allkeys-* policy): messages sent to it can vanish at its maxmemory, with no error to
    anyone. A warning, not a refusal: the policy is a setting of the broker's, and some
    sites cannot change it at once."""
    eviction = broker_eviction(cli.celery)
    if eviction is not None and eviction.evicts_queues:
        click.secho(f"{prefix}{eviction.warning()}", err=True, fg="yellow")


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
    as failed with their reason: the command then exits 3 (after queueing the others), as
    it does for copies of images that failed before, like `mammo run`. PATHS with no file
    to read make no batch: the command says "nothing to do" and exits 0, like `mammo run`.

    \b
    Example:
        MAMMO_BROKER_URL=redis://localhost:6379/0 \\
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo \\
        mammo submit /data/screening/2026-11-24/ --name night-24
    """
    require_broker(cli, "submit")  # a setup that cannot submit is told on an empty night too
    started = time.perf_counter()
    if (empty := nothing_to_do(cli.settings, paths)) is not None:
        if as_json:  # a script still reads the one object: no batch, nothing queued
            click.echo(json.dumps(_summary(time.perf_counter() - started,
                                           skipped=len(empty.skipped))))
        raise SystemExit(ExitCode.OK)  # as `mammo run`'s
    with lock_wait_notices(cli), file_counter("queueing") as on_file:
        outcome = submit(cli.settings, cli.sessions, cli.celery, paths, name=name,
                         priority=Priority(priority), on_file=on_file, manifest=manifest)
    seconds = time.perf_counter() - started
    failed_copies = sum(state == ImageState.FAILED.value for *_, state in outcome.duplicates)
    summary = _summary(seconds, batch_id=outcome.batch_id, files=outcome.files,
                       queued=len(outcome.queued), duplicates=len(outcome.duplicates),
                       duplicates_failed=failed_copies, rejected=len(outcome.rejected),
                       skipped=len(outcome.skipped), messages=outcome.messages,
                       reregistered=len(outcome.reregistered))
    failed = bool(outcome.rejected or failed_copies)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(outcome.batch_id)
        earlier = f" ({failed_copies} of them failed before)" if failed_copies else ""
        reasons = "; `mammo results --state failed` lists the reasons" if failed else ""
        again = len(outcome.reregistered)
        corrected = (f" ({again} of them re-registered with "
                     f"{'its manifest row' if again == 1 else 'their manifest rows'}, to be "
                     "scored again)" if again else "")
        STDERR.print(
            f"batch {outcome.batch_id}: {summary['queued']} queued in {outcome.messages} "
            f"tasks{corrected}, {summary['duplicates']} duplicates skipped{earlier}, "
            f"{summary['rejected']} rejected at intake, {summary['skipped']} skipped. Follow "
            f"it with `mammo status {outcome.batch_id}`{reasons}.")
    say_skipped(outcome.skipped)
    # A script that checks only the exit code must learn that files failed, as from `run`.
    raise SystemExit(ExitCode.IMAGES_FAILED if failed else ExitCode.OK)


def _summary(seconds: float, *, batch_id: int | None = None, files: int = 0, queued: int = 0,
             duplicates: int = 0, duplicates_failed: int = 0, rejected: int = 0,
             skipped: int = 0, messages: int = 0,
             reregistered: int = 0) -> dict[str, int | float | None]:
    """`mammo submit --json`'s object; ``batch_id`` None: nothing to do, no batch made.
    ``reregistered``: of ``queued``, images read before with inferred metadata that this
    submission's manifest rows corrected (``registration._correct_inferred``)."""
    return {"batch_id": batch_id, "files": files, "queued": queued,
            "reregistered": reregistered, "duplicates": duplicates,
            "duplicates_failed": duplicates_failed, "rejected": rejected, "skipped": skipped,
            "messages": messages, "seconds": round(seconds, 3),
            "files_per_s": round(files / max(seconds, 1e-6), 1)}


COMMANDS = (submit_command,)
