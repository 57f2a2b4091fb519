"""``mammo db upgrade`` and ``mammo recover``."""

from __future__ import annotations

import click

from producer.cli.commands_submit import require_broker
from producer.cli.context import CliContext, pass_cli
from producer.cli.progress import completion_bar
from shared.db.engine import upgrade
from shared.notify import Notifier
from shared.queries import require_batch
from shared.queue import broker_uptime_s
from shared.recovery import find_stuck, follow_up, lost_message_age_s, sweep

# A queued image this old is presumed to have lost its message (a busy night's queue is
# shorter: MAMMO_REQUEUE_AFTER_S, the workers' own wait, is 600 s).
RECOVER_AFTER_S = 1800


@click.group("db")
def db_group() -> None:
    """Database maintenance.

    \b
    Example:
        mammo db upgrade
    """


@db_group.command("upgrade")
@pass_cli
def db_upgrade(cli: CliContext) -> None:
    """Apply pending schema migrations (also done automatically on first use).

    \b
    Example:
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo mammo db upgrade
    """
    before, after = upgrade(cli.engine)
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@click.command("recover")
@click.option("--older-than", type=click.IntRange(0), default=None,
              help="Seconds a queued image may wait before its message is presumed lost "
              "[default: 1800, or the time since the Redis broker last started if shorter: "
              "a message sent before a restart is gone unless Redis kept it]. Use 0 to "
              "re-send every queued image: a second message for an image is harmless.")
@click.option("--batch", "batch_id", type=int, help="Only this batch.")
@click.option("--dry-run", is_flag=True, help="Report what would be re-queued; change nothing.")
@pass_cli
def recover_command(cli: CliContext, older_than: int | None, batch_id: int | None,
                    dry_run: bool) -> None:
    """Re-queue images whose wake-up message was lost (Redis restarted, worker killed).

    The database is the truth: images still queued after --older-than seconds, or claimed
    by a worker whose lease ran out, get a new message. Re-queuing is safe: claims and
    upserts make a second delivery a no-op. Without a broker, the images are processed here
    with the embedded worker. Then the follow-up: exams whose missing views timed out get
    their result, and notifications owed (never claimed) or failed more than
    MAMMO_NOTIFY_RESEND_AFTER_S ago are delivered. Workers also run all this on a timer
    (MAMMO_SWEEP_INTERVAL_S).

    \b
    Example:
        mammo recover --older-than 600
    """
    if batch_id is not None:
        with cli.sessions() as session:
            require_batch(session, batch_id)
    if cli.settings.is_embedded:
        with cli.sessions() as session:
            found = find_stuck(session, cli.settings,
                               queued_older_than_s=RECOVER_AFTER_S if older_than is None
                               else older_than,
                               batch_id=batch_id)
        ids = sorted(found.stale_queued + found.expired_claims)
        click.echo(f"{len(ids)} image(s) to recover{' (dry run)' if dry_run else ''}")
        if ids and not dry_run:
            from producer.embedded_run import process_ids_embedded

            with completion_bar("recovering") as progress:
                process_ids_embedded(cli.settings, cli.sessions, ids, progress=progress)
            click.echo(f"processed {len(ids)} recovered image(s) with the embedded worker")
    else:
        require_broker(cli, "recover")
        if older_than is None:
            older_than = lost_message_age_s(RECOVER_AFTER_S, broker_uptime_s(cli.celery))
        report = sweep(cli.sessions, cli.celery, cli.settings, queued_older_than_s=older_than,
                       batch_id=batch_id, force=True, dry_run=dry_run)
        if dry_run:
            click.echo(f"dry run: would re-queue {len(report.stale_queued)} queued and "
                       f"{len(report.expired_claims)} stale-claimed image(s)")
        else:
            click.echo(report.summary())
    if not dry_run:
        followed = follow_up(cli.sessions, cli.settings, Notifier(cli.settings, cli.sessions))
        click.echo(followed.summary())


COMMANDS = (db_group, recover_command)
