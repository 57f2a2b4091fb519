"""``mammo watch DIR``: the drop folder a scanner or PACS router writes into."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from producer.cli.context import CliContext, pass_cli
from producer.watch import WatchOptions, run_watch
from shared.db.lock_wait import LockWaitNotices
from shared.errors import PathNotFoundError
from shared.extras import WORKER, require

log = logging.getLogger("mammo.watch")


@click.command("watch")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--poll", is_flag=True,
              help="Poll instead of inotify: for network shares (SMB/CIFS, NFS), where "
                   "inotify does not see writes made by other machines.")
@click.option("--after", type=click.Choice(["leave", "move", "delete"]), default=None,
              help="What to do with a processed file [default: MAMMO_WATCH_AFTER, leave].")
@click.option("--quiet-period", type=click.FloatRange(0, 3600), default=None,
              help="Seconds a file must stay unchanged when no close/rename event is seen "
                   "[default: MAMMO_WATCH_QUIET_PERIOD_S].")
@pass_cli
def watch_command(cli: CliContext, directory: Path, poll: bool, after: str | None,
                  quiet_period: float | None) -> None:
    """Watch DIRECTORY (recursively) and queue every complete image written into it.

    A file is read only once it is complete (close-write or rename event, else a quiet
    period, and a DICOM must parse to its last pixel), registered exactly once (files
    already known are skipped as duplicates), and queued. Files present at start-up and
    files whose events were lost are found by scans reconciled with the database.

    With MAMMO_BROKER_URL set the watcher only queues (run `mammo worker` elsewhere);
    without it, an in-process worker classifies the files. Stop with Ctrl-C or SIGTERM:
    the file in hand is finished first, and a restart resumes where it stopped.

    \b
    Example:
        MAMMO_BROKER_URL=redis://localhost:6379/0 mammo watch /data/incoming --after move
    """
    updates: dict[str, object] = {}
    if after:
        updates["watch_after"] = after
    if quiet_period is not None:
        updates["watch_quiet_period_s"] = quiet_period
    settings = cli.settings.model_copy(update=updates)
    if not directory.is_dir():
        raise PathNotFoundError(f"Folder to watch does not exist: {directory}")
    # Behind another session's lock (an administrator's LOCK TABLE, a migration) the
    # watcher waits, as submit does: its log says on what, and who holds it up.
    notices = LockWaitNotices(cli.engine, lambda line: log.warning("%s", line))
    if settings.is_embedded:
        from producer.embedded_run import embedded_worker_service

        # Its in-process worker classifies the files: without TensorFlow every chunk failed
        # and the images stayed queued for ever behind a watcher that looked healthy.
        require(WORKER, needed_for="`mammo watch` without MAMMO_BROKER_URL (its in-process "
                                   "worker classifies the files)")

        with notices, embedded_worker_service(settings, cli.sessions) as (app, alive):
            run_watch(settings.embedded(), cli.sessions, app,
                      WatchOptions(directory, poll=poll, mode="embedded"), worker_alive=alive)
        return
    from producer.cli.commands_submit import require_broker  # as in recover_command

    require_broker(cli, "watch")  # and warns if Redis may evict the queue
    with notices:
        run_watch(settings, cli.sessions, cli.celery, WatchOptions(directory, poll=poll))


COMMANDS = (watch_command,)
