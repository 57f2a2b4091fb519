"""``mammo db upgrade`` and ``mammo recover``."""

from __future__ import annotations

from datetime import timedelta

import click

from producer.cli.commands_submit import require_broker
from producer.cli.context import CliContext, pass_cli
from producer.cli.progress import completion_bar
from shared.db import lifecycle
from shared.db.engine import upgrade
from shared.enums import Priority
from shared.queue import enqueue_chunks
from shared.timeutil import utcnow


@click.group("db")
def db_group() -> None:
    """Database maintenance."""


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
@click.option("--older-than", type=click.IntRange(0), default=1800, show_default=True,
              help="Seconds a queued image may wait before its message is presumed lost.")
@click.option("--batch", "batch_id", type=int, help="Only this batch.")
@click.option("--dry-run", is_flag=True, help="Report what would be re-queued; change nothing.")
@pass_cli
def recover_command(cli: CliContext, older_than: int, batch_id: int | None,
                    dry_run: bool) -> None:
    """Re-queue images whose wake-up message was lost (Redis restarted, worker killed).

    The database is the truth: images still queued after --older-than seconds, or claimed
    by a worker whose lease ran out, get a new message. Re-queuing is safe: claims and
    upserts make a second delivery a no-op. Without a broker, the images are processed
    here with the embedded worker.

    \b
    Example:
        mammo recover --older-than 600
    """
    now = utcnow()
    with cli.sessions() as session:
        ids = lifecycle.stale_images(
            session, queued_before=now - timedelta(seconds=older_than),
            claimed_before=now - timedelta(seconds=cli.settings.claim_lease_s),
            batch_id=batch_id)
    if dry_run or not ids:
        click.echo(f"{len(ids)} image(s) to re-queue{' (dry run)' if dry_run else ''}")
        return
    if cli.settings.is_embedded:
        from producer.embedded_run import process_ids_embedded

        with completion_bar("recovering") as progress:
            process_ids_embedded(cli.settings, cli.sessions, ids, progress=progress)
        click.echo(f"processed {len(ids)} recovered image(s) with the embedded worker")
        return
    require_broker(cli, "recover")
    sent = enqueue_chunks(cli.celery, ids, chunk_size=cli.settings.chunk_size,
                          priority=Priority.ROUTINE)
    with cli.sessions() as session:
        lifecycle.mark_enqueued(session, ids)
        session.commit()
    click.echo(f"re-queued {len(ids)} image(s) in {sent} message(s)")


COMMANDS = (db_group, recover_command)
