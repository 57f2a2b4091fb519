"""``mammo db upgrade``, ``mammo recover`` and ``mammo rescore``: putting work (back) in the
queue from what the database says."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click

from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from producer.cli.options import date_range_options, utc_range
from producer.cli.progress import completion_bar, quiet_embedded_logs
from shared.db import lifecycle
from shared.db.clock import database_now
from shared.db.engine import upgrade
from shared.imaging.reader_version import READER_VERSION
from shared.notify import Notifier
from shared.queries import require_batch, require_study
from shared.queue import broker_uptime_s
from shared.recovery import (
    SweepReport,
    claimed_images,
    find_stuck,
    follow_up,
    held_claims,
    lost_after,
    lost_message_age_s,
    queued_count,
    requeue,
    sweep,
)
from shared.rescoring import RescoreFilter, not_current_among, not_scored_by

if TYPE_CHECKING:
    from models.registry import ModelSpec

# A queued image sent this long ago is presumed to have lost its message whatever the
# broker holds (a busy night's queue is shorter: MAMMO_REQUEUE_AFTER_S, the workers' own
# wait, is 600 s); a younger one is judged by the sweeper's rule (``sweep``).
RECOVER_AFTER_S = 1800


# How to go back from an upgrade, said by `mammo db --help` and `mammo db upgrade --help`
# (README: "Upgrading to a new release").
_BACK_UP_FIRST = """Back up the database before a new release runs any command on it (its first
    command migrates the database):

    \b
        PostgreSQL: pg_dump -Fc mammo > mammo-before-upgrade.dump
        SQLite:     sqlite3 mammo.db ".backup mammo-before-upgrade.db"

    There is no downgrade command: to go back, restore that backup and install the earlier
    release (the results stored since the upgrade go with it; submit those files again)."""


@click.group("db", help=f"""Database maintenance.

    {_BACK_UP_FIRST}

    \b
    Example:
        mammo db upgrade
    """)
def db_group() -> None:
    pass


@db_group.command("upgrade", help=f"""Apply pending schema migrations (also done
    automatically on first use).

    {_BACK_UP_FIRST}

    \b
    Example:
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo mammo db upgrade
    """)
@pass_cli
def db_upgrade(cli: CliContext) -> None:
    before, after = upgrade(cli.engine)
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@click.command("recover")
@click.option("--older-than", type=click.IntRange(0), default=None,
              help="Seconds a queued image may wait before its message is presumed lost, "
              "whatever the broker holds [default: the workers' sweeper's rule, as `mammo "
              "status` counts messages lost: sent over MAMMO_REQUEUE_AFTER_S ago "
              "(MAMMO_URGENT_REQUEUE_AFTER_S if urgent) with no message waiting in the broker "
              "at its priority or a more urgent one, or over 1800 s ago whatever it holds; "
              "each wait cut to the time since the Redis broker last started if shorter: a "
              "message sent before a restart is gone unless Redis kept it; without a broker, "
              "0]. Use 0 to re-send every queued image: a second message for an image is "
              "harmless.")
@click.option("--batch", "batch_id", type=int, help="Only this batch.")
@click.option("--dry-run", is_flag=True, help="Report what would be re-queued; change nothing.")
@pass_cli
def recover_command(cli: CliContext, older_than: int | None, batch_id: int | None,
                    dry_run: bool) -> None:
    """Re-queue images whose wake-up message was lost (Redis restarted, worker killed).

    The database is the truth: images still queued after --older-than seconds (by default,
    those the workers' sweeper presumes lost, urgent ones after a shorter wait), or claimed
    by a worker whose lease ran out, get a new message. Re-queuing is safe: claims and
    upserts make a second delivery a no-op. Without a broker, every queued image (an
    interrupted `mammo run` left it so) is processed here with the embedded worker, and
    images another process still claims are waited for until their lease ends (a killed
    run's: 4 heartbeats), then processed too; it exits 3 when some of them failed. Then
    the follow-up: exams whose missing views timed out get their result, and notifications
    owed (never claimed) or failed more than MAMMO_NOTIFY_RESEND_AFTER_S ago are delivered.
    Workers also run all this on a timer (MAMMO_SWEEP_INTERVAL_S).

    \b
    Example:
        mammo recover --older-than 600
    """
    if batch_id is not None:
        with cli.sessions() as session:
            require_batch(session, batch_id)
    failed = False
    if cli.settings.is_embedded:
        failed = _recover_embedded(cli, older_than, batch_id, dry_run)
    else:
        # commands_submit loads the image readers (pydicom, OpenCV); `mammo db` and this
        # sweep need only its broker check.
        from producer.cli.commands_submit import require_broker

        require_broker(cli, "recover")
        if older_than is None:
            _recover_as_the_sweeper(cli, batch_id, dry_run)
        else:
            young = _queued_younger(cli, older_than, batch_id)  # before the sweep stamps
            _say_swept(sweep(cli.sessions, cli.celery, cli.settings,
                             queued_older_than_s=older_than, batch_id=batch_id, force=True,
                             dry_run=dry_run), dry_run)
            _say_left_alone(young, older_than, "re-sends")
        with cli.sessions() as session:
            held = held_claims(session, cli.settings, claimed_images(session, batch_id))
        if held.count:
            click.echo(f"{held.describe()}: a live worker finishes them; if it stopped, a "
                       "worker's sweeper or `mammo recover` re-sends them after that")
    if not dry_run:
        followed = follow_up(cli.sessions, cli.settings, Notifier(cli.settings, cli.sessions))
        click.echo(followed.summary())
    if failed:
        raise SystemExit(int(ExitCode.IMAGES_FAILED))


def _recover_as_the_sweeper(cli: CliContext, batch_id: int | None, dry_run: bool) -> None:
    """Re-send by the workers' sweeper's rule (``sweep``), which `mammo status` counts as
    messages lost and owed, and also every image sent over ``RECOVER_AFTER_S`` ago whatever
    the broker holds; each wait cut to the broker's uptime (``lost_after``).

    The sweeper's waits, not a longer one of its own: an urgent image whose message a
    killed worker held waited behind a night's routine backlog, and a `mammo recover` run
    because status named it lost left it alone as younger than 1800 s."""
    uptime = broker_uptime_s(cli.celery)
    waits = lost_after(cli.settings, uptime)
    forced = lost_message_age_s(RECOVER_AFTER_S, uptime)
    with cli.sessions() as session:  # before the sweep stamps its own
        queued = queued_count(session, batch_id)
    report = sweep(cli.sessions, cli.celery, cli.settings,
                   queued_older_than_s=waits.routine_s, urgent_older_than_s=waits.urgent_s,
                   owed_older_than_s=cli.settings.requeue_after_s, force_older_than_s=forced,
                   batch_id=batch_id, dry_run=dry_run)
    _say_swept(report, dry_run)
    left = max(0, queued - len(report.stale_queued)) + len(report.left_alone)
    if left:
        click.echo(f"{left} queued image(s) were left alone: waiting under {waits.routine_s} "
                   f"s ({waits.urgent_s} s if urgent), or under {forced} s behind messages "
                   "still in the broker at their priority or a more urgent one; `mammo "
                   "recover --older-than 0` re-sends them")


def _say_swept(report: SweepReport, dry_run: bool) -> None:
    if dry_run:
        click.echo(f"dry run: would re-queue {len(report.stale_queued) - len(report.left_alone)} "
                   f"queued and {len(report.expired_claims)} stale-claimed image(s)")
    else:
        click.echo(report.summary())


def _recover_embedded(cli: CliContext, older_than: int | None, batch_id: int | None,
                      dry_run: bool) -> bool:
    """Process the queued images and wait for the claimed ones; True when some failed.

    No broker: a queued image's message, if it ever had one, was in the memory of a run
    that ended (an interrupted `mammo run`), so none is waiting anywhere. A claimed image's
    holder may still be alive, or killed before its lease ends: leaving those out (and
    saying all was recovered) left them for a second recover the user had no reason to run.
    """
    older_than = 0 if older_than is None else older_than
    young = _queued_younger(cli, older_than, batch_id)
    with cli.sessions() as session:
        found = find_stuck(session, cli.settings, queued_older_than_s=older_than,
                           batch_id=batch_id)
        claimed = claimed_images(session, batch_id)
        held = held_claims(session, cli.settings, claimed)
    queued = sorted(found.stale_queued)
    click.echo(f"{len(queued) + len(claimed)} image(s) to recover ({len(queued)} queued, "
               f"{len(claimed)} claimed){' (dry run)' if dry_run else ''}")
    _say_left_alone(young, older_than, "processes")
    if dry_run:
        if held.count:
            click.echo(f"{held.describe()}: recover waits for them, then takes them over")
        return False
    if not queued and not claimed:
        return False
    return _run_embedded(cli, queued, "recovered", claimed=claimed)


def _queued_younger(cli: CliContext, older_than: int, batch_id: int | None) -> int:
    """Queued images that ``--older-than`` keeps out of this recover."""
    if older_than <= 0:
        return 0
    with cli.sessions() as session:  # the clock the sweep's cutoff is read on
        since = database_now(session) - timedelta(seconds=older_than)
        return lifecycle.queued_since(session, since, batch_id=batch_id)


def _say_left_alone(count: int, older_than: int, verb: str) -> None:
    """Name the queued images a recover left alone: their message may be on its way, or
    gone with no restart to tell (a FLUSHDB, an eviction), and the summary's '0 queued too
    long' read as if none were waiting."""
    if count:
        click.echo(f"{count} queued image(s) younger than {older_than} s were left alone; "
                   f"`mammo recover --older-than 0` {verb} them")


def _run_embedded(cli: CliContext, ids: list[int], what: str, *,
                  claimed: list[int] | None = None, rescored_by: ModelSpec | None = None,
                  reread: bool = False) -> bool:
    """Process ``ids`` (and wait for ``claimed``) here; True when some of them failed, or,
    for a re-score (``rescored_by``: the model version; ``reread``: read again by this
    release's readers), could not be scored again. A re-scored image fails only where this
    release's readers refuse the file an earlier release read (``withdraws_earlier_result``):
    its earlier result is withdrawn."""
    from producer.embedded_run import count_failed, process_ids_embedded

    everything = [*ids, *(claimed or [])]
    quiet_embedded_logs()
    with completion_bar(f"{what} images") as progress:
        here = process_ids_embedded(cli.settings, cli.sessions, ids, claimed=claimed or [],
                                    progress=progress)
    failed = count_failed(cli.sessions, everything)
    # Done still, without this model's prediction: the worker kept their earlier result
    # (file gone, replaced, truncated...); they are neither among ``here`` nor elsewhere's.
    kept = 0
    if rescored_by is not None:
        with cli.sessions() as session:
            kept = len(not_current_among(session, rescored_by, everything, reread=reread))
    # A live `mammo run` (or worker) beside this one may have finished some of them.
    elsewhere = max(len(set(everything)) - here - kept, 0)
    click.echo(f"processed {here} {what} image(s) with the embedded worker"
               + (f"; {kept} could not be scored again and "
                  f"{'keeps its' if kept == 1 else 'keep their'} earlier result (the file "
                  "gone, replaced or damaged since it was scored...: the warnings above say "
                  "which and why)" if kept else "")
               + (f"; {elsewhere} more finished by another process meanwhile" if elsewhere
                  else "")
               + (_failed_note(failed, rescored=rescored_by is not None) if failed else ""))
    return failed > 0 or kept > 0


def _failed_note(failed: int, *, rescored: bool) -> str:
    if not rescored:
        return f"; {failed} failed: `mammo results --state failed` says why"
    # The only way a re-scored (done) image ends failed (worker.pipeline._save).
    return (f"; {failed} now failed: this release's readers refuse "
            f"{'its file' if failed == 1 else 'their files'}, which an earlier release read "
            f"and scored; {'that result is' if failed == 1 else 'those results are'} "
            "withdrawn (kept in the database as history; exam results recomputed): "
            "`mammo results --state failed` says why")


@click.command("rescore")
@click.option("--batch", "batch_id", type=int, help="Only this batch's images.")
@click.option("--study", "study_uid", help="Only this StudyInstanceUID's images.")
@date_range_options
@click.option("--reread", is_flag=True,
              help="Also re-score the images an earlier release's readers read (its "
                   "decoding, windowing or view reading since fixed), even those this model "
                   "scored: after an upgrade.")
@click.option("--dry-run", is_flag=True, help="Count what would be re-scored; change nothing.")
@pass_cli
def rescore_command(cli: CliContext, batch_id: int | None, study_uid: str | None,
                    since: datetime | None, until: datetime | None, reread: bool,
                    dry_run: bool) -> None:
    """Score done images again with the model now in use (after `mammo models activate`).

    Re-queues the done images in the filter that this model has not scored (submitting the
    same files again only finds them known). Their earlier predictions are kept, one per
    image per model version; reports and the worklist read the newest, and exam results are
    recomputed. An image that cannot be scored again (its file gone, replaced or damaged
    since) stays done with its earlier result, and the worker logs why. Workers score them
    with their own model: restart running workers after an activation first. Without a
    broker they are scored here, and the command exits 3 when some could not be, or
    failed.

    After an upgrade whose readers read some files differently, --reread also re-queues the
    done images whose result an earlier release's readers made (each prediction records its
    reader version), the current model's included; the new prediction replaces the model's
    earlier one. One whose file this release's readers refuse (e.g. a DICOM whose Bits
    Stored understates its values, which an earlier release read as a banded image) turns
    failed with their reason, as a first reading would: its earlier result is withdrawn
    (kept in the database, shown nowhere) and its exam result recomputed. A database or
    broker outage meanwhile withdraws nothing. Upgrade every worker first: one still on the
    earlier release reads them as before.

    \b
    Examples:
        mammo models activate default:1.7.0 && mammo rescore --batch 42
        mammo rescore --reread --since 2026-01-01 --dry-run
    """
    from models.activation import describe
    from producer.embedded_run import check_model

    flt = RescoreFilter(batch_id, study_uid, *utc_range(since, until))
    if not flt.narrowed:
        raise click.UsageError("name what to re-score: --batch, --study, --since or --until")
    spec = check_model(cli.settings, cli.sessions)
    with cli.sessions() as session:
        if batch_id is not None:
            require_batch(session, batch_id)
        if study_uid:
            require_study(session, study_uid)
        ids = not_scored_by(session, spec, flt, reread=reread)
        model = describe(session, spec)  # with its sha256 where another shares its name
    readers = (f" with this release's readers (reader version {READER_VERSION})" if reread
               else "")
    click.echo(f"{len(ids)} done image(s) not scored by {model}{readers}"
               f"{' (dry run)' if dry_run else ''}")
    if dry_run or not ids:
        return
    if not cli.settings.is_embedded:
        from producer.cli.commands_submit import require_broker  # as in recover_command

        require_broker(cli, "rescore")
        _warn_of_other_models(cli, spec)
    with cli.sessions() as session:
        ids = lifecycle.reopen(session, ids)
        session.commit()
    if cli.settings.is_embedded:
        if _run_embedded(cli, ids, "re-scored", rescored_by=spec, reread=reread):
            raise SystemExit(int(ExitCode.IMAGES_FAILED))
    else:
        sent = requeue(cli.sessions, cli.celery, cli.settings, ids)
        click.echo(f"re-queued {len(ids)} image(s) in {sent} message(s) for the workers"
                   + ("; any whose file this release's readers refuse end failed, their "
                      "earlier result withdrawn: `mammo results --state failed` lists them"
                      if reread else ""))


def _warn_of_other_models(cli: CliContext, spec: ModelSpec) -> None:
    """Workers keep the model they started with: re-queued images reaching one still on
    the old model are scored by it again, and the re-score does nothing."""
    from shared.queries import workers_seen

    with cli.sessions() as session:
        stale = [w for w in workers_seen(session) if spec.sha256 not in w["sha256"]]
    if stale:
        names = ", ".join(f"{w['worker']} ({' + '.join(w['models'])})" for w in stale)
        click.secho(f"warning: workers seen in the last 10 minutes scored with another model: "
                    f"{names}. Restart them so they load {spec.name} {spec.version}, or these "
                    "images are scored again by the old model.", err=True, fg="yellow")


COMMANDS = (db_group, recover_command, rescore_command)
