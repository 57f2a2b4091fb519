"""``mammo status`` and ``mammo results``: read the database, never the queue's guesses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NamedTuple

import click
from sqlalchemy import text
from sqlalchemy.orm import Session

from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from producer.cli.options import date_range_options, format_option, utc_range
from shared.db.lock_wait import NOTICE_AFTER_S
from shared.enums import ImageState, Label
from shared.formatting import render
from shared.imaging.reader_version import READER_VERSION
from shared.notify import records as notify_records
from shared.queries import (
    BATCH_STATUS_KEYS,
    RESULT_KEYS,
    ResultFilter,
    batch_status,
    iter_results,
    recent_batch_ids,
    require_batch,
    require_targets,
    superseded_only,
    system_health,
)
from shared.queue import (
    broker_eviction,
    broker_uptime_s,
    broker_write_refusal,
    live_workers,
    queue_depths,
)
from shared.recovery import find_stuck, lost_after
from shared.save_failures import failing_summary, save_failures

TABLE_PAGE = 1000  # rows a terminal table shows without --limit
BROKER_DOWN = "UNREACHABLE"
# Redis answers and refuses every write (maxmemory reached, a read-only replica): nothing can
# be sent, acked or claimed from it, as when it is down, so a probe gets the same exit 8.
BROKER_REFUSING = "refusing writes"
# Redis evicts any key at its maxmemory (an allkeys-* policy): queued messages can vanish
# with no error to anyone, so a probe hears of it as it hears of a broker that is down.
BROKER_EVICTING = "evicting keys"
# model_version: after an activation, old and new scores sit side by side in one listing.
RESULT_COLUMNS = ("image_id", "batch_id", "state", "duplicate_of", "laterality", "view", "label",
                  "suspicion", "p_normal", "p_benign", "p_malignant", "model_version",
                  "error_code", "error_message", "source")


@click.command("status")
@click.argument("batch", type=int, required=False)
@click.option("--last", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Without BATCH: how many recent batches to show.")
@click.option("--health", is_flag=True,
              help="Show system health instead: broker and database reachable, queue depth, "
                   "workers answering now, stale claims, oldest queued image, images whose "
                   "message was probably lost or never sent, workers that scored lately, "
                   "notifications owed, workers whose saves the database refuses, whether "
                   "a worker started now could load its model. "
                   "Exits 7 when the database is unreachable or workers' saves fail, 8 when "
                   "the broker is unreachable, refuses writes (Redis at its maxmemory, a "
                   "read-only replica) or may evict queued messages (an allkeys-* "
                   "maxmemory-policy), 5 when the model workers would load is missing or "
                   "not the one its metadata or the activation names.")
@format_option
@pass_cli
def status_command(cli: CliContext, batch: int | None, last: int, health: bool,
                   fmt: str) -> None:
    """Counts per state, throughput and ETA per batch; then the system's health.

    The table shows both; --format csv|json lists the batches alone (their rows stay one
    kind of record), and --health gives the health row alone (queue depth, workers seen,
    database and broker, the model), exiting 7 or 8 when either is not usable, 5 when no
    worker could start for want of its model: the check for a monitoring job. Plain
    `mammo status` shows the health without judging it: exit 0 while the database answers,
    whatever the broker or the model says.

    \b
    Example:
        mammo status 42
        mammo status --format json
        mammo status --health --format json
    """
    if health:
        health_row = _health(cli)
        render([health_row], fmt, keys=tuple(health_row), title="Health")
        _warn_saves_failing(health_row)
        _warn_evicting(health_row)
        _warn_workers(health_row)
        _warn_model(health_row)
        broker = str(health_row["broker"])  # a probe reads the exit code
        if broker == BROKER_DOWN or broker.startswith((BROKER_REFUSING, BROKER_EVICTING)):
            raise SystemExit(int(ExitCode.BROKER_UNAVAILABLE))
        if health_row["saves_failing"]:  # the database refuses writes: README's exit 7
            raise SystemExit(int(ExitCode.DATABASE_UNAVAILABLE))
        if not health_row["model_usable"]:  # what `mammo worker` exits with: README's exit 5
            raise SystemExit(int(ExitCode.NO_MODEL))
        return
    with cli.sessions() as session:
        if batch is not None:
            require_batch(session, batch)
        ids = [batch] if batch is not None else recent_batch_ids(session, last)
        statuses = [s for s in (batch_status(session, i, lease_s=cli.settings.claim_lease_s)
                                for i in ids) if s is not None]
    rows = [s.as_row() for s in statuses]
    render(rows, fmt, keys=BATCH_STATUS_KEYS, title="Batches")
    for warning in filter(None, (s.mixed_models_warning for s in statuses)):
        # On stderr: the csv/json on stdout stay machine-readable.
        click.secho(f"warning: {warning}", err=True, fg="yellow")
    if fmt != "table":
        return
    if any(row["copies"] for row in rows):
        click.echo("copies: files a batch sent again that were already known (its report's "
                   "duplicates): not in its total; the state columns count each under its "
                   "original image's state, and the batch finishes when they are done")
    health_row = _health(cli)
    for key, value in health_row.items():
        click.echo(f"{key.replace('_', ' ')}: {'-' if value is None else value}")
    _explain_notifications(health_row)
    _warn_unsent(health_row, owed_after=cli.settings.requeue_after_s)
    _warn_saves_failing(health_row)
    _warn_evicting(health_row)
    _warn_workers(health_row)
    _warn_model(health_row)


def _warn_model(health_row: dict[str, object]) -> None:
    """No worker started now can load its model (each exits 5), while those running keep
    scoring with the bytes they loaded at start (``WorkerRuntime.pin_model``)."""
    if not health_row["model_usable"]:
        click.secho("warning: a worker started now would refuse its model and exit 5 "
                    "(workers already running keep the model they started with): "
                    f"{health_row['model_problem']}", err=True, fg="yellow")


def _warn_workers(health_row: dict[str, object]) -> None:
    """Workers that scored lately with another model than the activated one, or as a
    release before this database's schema (``workers_seen``)."""
    if health_row["workers_on_other_models"]:
        click.secho(f"warning: {health_row['workers_on_other_models']} scored in the last 10 "
                    f"minutes with another model than the active {health_row['model_active']}: "
                    "a worker keeps the model it started with; restart it to switch (one "
                    "started with MAMMO_MODEL set keeps that model)", err=True, fg="yellow")
    if health_row["workers_of_earlier_releases"]:
        click.secho(f"warning: {health_row['workers_of_earlier_releases']} scored in the last "
                    "10 minutes as another release (a reader version other than this "
                    f"release's {READER_VERSION}, or none): that release's worker is still "
                    "running against this database and must be "
                    "stopped and upgraded, as its results follow the earlier release's rules "
                    "(labels, readers); then `mammo rescore --reread --since DATE` scores "
                    "them again", err=True, fg="yellow")


def _warn_evicting(health_row: dict[str, object]) -> None:
    """Redis may evict the queue's keys, or has evicted keys under an earlier policy."""
    if health_row["broker_eviction"]:
        click.secho(f"warning: {health_row['broker_eviction']}", err=True, fg="yellow")


def _warn_saves_failing(health_row: dict[str, object]) -> None:
    """The database answers this status's reads while it refuses the workers' writes (a
    full disk): they retry, and nothing progresses. Their record in the broker says so."""
    if health_row["saves_failing"]:
        click.secho(f"warning: {health_row['save_failure']}. The workers hand the images "
                    "back (attempts refunded) and retry: nothing is lost, but nothing is "
                    "saved until the database accepts writes again (its disk full? read "
                    "only?); the workers' logs have the whole error", err=True, fg="yellow")


def _warn_unsent(health_row: dict[str, object], *, owed_after: int) -> None:
    """``owed_after``: the sweeper's full wait, which a broker restart does not cut short
    for images owed a message (``lost_message_age_s``)."""
    after, urgent = health_row["lost_after_s"], health_row["urgent_lost_after_s"]
    if health_row["messages_lost"]:
        click.secho(f"warning: {health_row['messages_lost']} image(s) queued for over {after} s "
                    f"({urgent} s if urgent) while no message waits in the broker at their "
                    "priority or a more urgent one: their messages were probably lost (Redis "
                    "restarted without its data? a worker killed holding them?); run `mammo "
                    "recover` (a worker's sweeper also re-sends them, every "
                    "MAMMO_SWEEP_INTERVAL_S)", err=True, fg="yellow")
    if health_row["messages_owed"]:
        click.secho(f"warning: {health_row['messages_owed']} image(s) queued for over "
                    f"{owed_after} s with no message sent (a send that failed: the broker "
                    "away, or a producer stopped before its send): a worker's sweeper sends "
                    "them at its next pass (every MAMMO_SWEEP_INTERVAL_S) whatever the broker "
                    "queue holds; with no worker running, run `mammo recover`",
                    err=True, fg="yellow")


def _explain_notifications(health_row: dict[str, object]) -> None:
    if health_row["notifications_undelivered"]:
        click.echo("  (`mammo recover` or a worker's sweeper sends them again once they failed "
                   "MAMMO_NOTIFY_RESEND_AFTER_S ago; the worker's log says why they failed)")
    if health_row["notifications_pending"]:
        click.echo("  (pending: being sent now, or left by a worker stopped mid-send: a "
                   "worker's sweeper or `mammo recover` sends those again "
                   f"{notify_records.STALE_AFTER.seconds // 60} min after their claim)")


def _health(cli: CliContext) -> dict[str, object]:
    from models.activation import active_version, model_problem

    settings = cli.settings
    with _health_session(cli) as session:  # reaching the database is the first check
        active = active_version(session)
        info = system_health(session, lease_s=settings.claim_lease_s,
                             active_model=f"{active.name}:{active.version}" if active else None)
        # The activated model's directory gone or re-copied: every worker exits 5 at start.
        info = _with_model_check(info, model_problem(settings, session))
        # A batch e-mail or alert that never left is otherwise seen only in a worker's log.
        owed = notify_records.undelivered(
            session, give_up_after=timedelta(seconds=settings.notify_give_up_after_s))
        info["notifications_undelivered"], info["notifications_pending"] = owed.failed, owed.pending
    # Without a broker (embedded) or with it down, none of these can be known.
    broker, depth, depths, live = "embedded (no broker)", None, None, None
    evicted: int | None = None  # keys Redis evicted since it started (INFO stats)
    evicting: str | None = None  # what to do about its eviction, when it may evict ours
    unsent = _Unsent(None, None, None, None)
    if not settings.is_embedded:
        depths = queue_depths(cli.celery)
        depth = None if depths is None else sum(depths.values())
        broker = "reachable" if depth is not None else BROKER_DOWN
        if depth is not None and (refusal := broker_write_refusal(cli.celery)):
            broker = f"{BROKER_REFUSING}: {refusal}"
        eviction = broker_eviction(cli.celery) if depth is not None else None
        if eviction is not None:
            evicted, evicting = eviction.evicted_keys, eviction.warning()
            if eviction.evicts_queues and broker == "reachable":
                broker = f"{BROKER_EVICTING} (maxmemory-policy {eviction.policy})"
    failing: int | None = None
    failure: str | None = None
    if depths is not None:
        answered = live_workers(cli.celery)
        live = None if answered is None else ", ".join(answered) or "none"
        unsent = _unsent_messages(cli, depths)
        # Recorded by the workers in the broker: the database may refuse their writes
        # while it answers these reads (``shared.save_failures``).
        if (recorded := save_failures(cli.celery)) is not None:
            failing, failure = len(recorded[0]), failing_summary(*recorded)
    return {"database": "reachable", "broker": broker, "broker_evicted_keys": evicted,
            "broker_eviction": evicting, "queue_depth": depth,
            "workers_live": live, **info, "messages_lost": unsent.lost,
            "messages_owed": unsent.owed, "lost_after_s": unsent.after,
            "urgent_lost_after_s": unsent.urgent_after,
            "saves_failing": failing, "save_failure": failure}


def _with_model_check(info: dict[str, object], problem: str | None) -> dict[str, object]:
    """``info`` with ``model_usable`` and ``model_problem`` right after ``model_active``."""
    items = list(info.items())
    at = list(info).index("model_active") + 1
    checked = [("model_usable", problem is None), ("model_problem", problem)]
    return dict(items[:at] + checked + items[at:])


# How long the health check's reads wait for a lock another session holds on PostgreSQL:
# as long as submit and run wait before they say what they wait on.
HEALTH_LOCK_WAIT_S = int(NOTICE_AFTER_S)


@contextmanager
def _health_session(cli: CliContext) -> Iterator[Session]:
    """A session whose reads wait at most ``HEALTH_LOCK_WAIT_S`` for a table's lock (on
    PostgreSQL): behind a ``LOCK TABLE images`` held 200 s, `mammo status --health` waited
    200 s, printing nothing, and a probe that called it hung with it. Past the wait the
    server cancels the read (SQLSTATE 55P03): exit 7, naming the lock."""
    with cli.sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            # SET LOCAL: the transaction's alone; it cannot outlive the session in the pool.
            session.execute(text(f"SET LOCAL lock_timeout = {HEALTH_LOCK_WAIT_S * 1000}"))
        yield session


class _Unsent(NamedTuple):
    lost: int | None  # sent, and presumed lost: queued too long, none waiting ahead of it
    owed: int | None  # never sent (a send that failed): queued too long, at any depth
    after: int | None  # the sweeper's wait
    urgent_after: int | None  # the sweeper's wait for an urgent image


def _unsent_messages(cli: CliContext, depths: dict[int, int]) -> _Unsent:
    """Images the sweeper's next pass sends, by its own rules (``recovery.sweep``): those
    whose message was sent, queued longer than its wait (``lost_after``: shorter for an
    urgent image, and after a broker restart), only while no message waits in the broker
    at their priority or a more urgent one (a long wait behind those is a busy night), and
    those owed one, queued longer than the full wait (or given up by their sender),
    whatever the broker holds (none of theirs waits there)."""
    waits = lost_after(cli.settings, broker_uptime_s(cli.celery))
    with _health_session(cli) as session:
        stuck = find_stuck(session, cli.settings, queued_older_than_s=waits.routine_s,
                           urgent_older_than_s=waits.urgent_s,
                           owed_older_than_s=cli.settings.requeue_after_s)
    return _Unsent(len(stuck.presumed_lost(depths)), len(stuck.owed), waits.routine_s,
                   waits.urgent_s)



@click.command("results")
@click.option("--batch", "batch_id", type=int, help="Only this batch.")
@click.option("--study", "study_uid", help="Only this StudyInstanceUID.")
@click.option("--patient", "patient_pseudonym",
              help="Only this patient pseudonym (as shown in reports; never the raw ID).")
@click.option("--state", type=click.Choice([s.value for s in ImageState]))
@click.option("--label", type=click.Choice([c.value for c in Label]))
@click.option("--min-score", type=click.IntRange(1, 10), help="Minimum suspicion (1-10).")
@click.option("--model-version",
              help="Only images whose latest prediction is of this model version: "
                   "VERSION, or NAME:VERSION as results print it (an image scored again "
                   "since, by `mammo rescore` or another model, is not listed under its "
                   "earlier version).")
@date_range_options
@click.option("--limit", type=click.IntRange(1), default=None,
              help=f"Page size [default: all rows; the table shows at most {TABLE_PAGE}].")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Rows to skip (pages are in image id order, so they are stable).")
@format_option
@pass_cli
def results_command(cli: CliContext, batch_id: int | None, study_uid: str | None,
                    patient_pseudonym: str | None, state: str | None, label: str | None,
                    min_score: int | None, model_version: str | None, since: datetime | None,
                    until: datetime | None, limit: int | None, offset: int, fmt: str) -> None:
    """Stored results, one row per image (the latest prediction of each).

    With --batch (and no other filter, no paging), each file that batch sent again (already
    known) is listed too, under its own source, with the original image's id, state and
    result, and duplicate_of set to that id (null on every other row).

    \b
    Example:
        mammo results --batch 42 --format json
        mammo results --state failed --since 2026-11-24 --until 2026-11-25
        mammo results --label malignant --min-score 8 --format csv > flagged.csv
        mammo results --limit 500 --offset 1000       # the third page of 500
    """
    page = limit or (TABLE_PAGE if fmt == "table" else None)
    since, until = utc_range(since, until)
    flt = ResultFilter(batch_id=batch_id, study_uid=study_uid,
                       patient_pseudonym=patient_pseudonym, state=state, label=label,
                       min_suspicion=min_score, model_version=model_version,
                       since=since, until=until,
                       limit=page + 1 if page else None, offset=offset,
                       include_duplicates=batch_id is not None and limit is None)
    with cli.sessions() as session:
        require_targets(session, flt)
        # CSV and JSON are written as the rows are read, a block at a time: a year of
        # results (500,000 rows) must not sit in memory (a 1-2 GB container was killed).
        rows = _Page(iter_results(session, flt), page)
        shown = render(rows, fmt, keys=RESULT_KEYS, columns=RESULT_COLUMNS, title="Results")
        superseded = not shown and model_version and superseded_only(session, flt)
    if rows.first_left_out is not None and page is not None:
        click.echo(_more_rows_note(rows.first_left_out, page, offset, limit, fmt), err=True)
    if superseded:
        click.echo(f"note: every prediction of model version {model_version} among the "
                   "images selected was replaced by a later scoring (`mammo rescore`, "
                   "another model); --model-version matches each image's latest "
                   "prediction only", err=True)


class _Page:
    """The first ``page`` rows of ``rows`` (all with None), as they come; the one after
    them, read to know that more follow, is kept in ``first_left_out``."""

    def __init__(self, rows: Iterator[dict[str, object]], page: int | None) -> None:
        self._rows, self._page = rows, page
        self.first_left_out: dict[str, object] | None = None

    def __iter__(self) -> Iterator[dict[str, object]]:
        for count, row in enumerate(self._rows):
            if self._page is not None and count >= self._page:
                self.first_left_out = row
                close = getattr(self._rows, "close", None)
                if close is not None:  # its cursor, now rather than when collected
                    close()
                return
            yield row


def _more_rows_note(first_left_out: dict[str, object], page: int, offset: int,
                    limit: int | None, fmt: str) -> str:
    if first_left_out["duplicate_of"] is not None:
        # Every image row is shown: the rest are the batch's repeated files, which an
        # --offset page does not list.
        return ("more rows follow (files this batch sent again, already known): use "
                "--format csv|json")
    # CSV and JSON list every row unless --limit pages them: only the table's note offers
    # them as the way to have all.
    return (f"more rows follow: add --offset {offset + page}"
            f"{'' if limit else f' --limit {page}'}"
            f"{', or use --format csv|json' if fmt == 'table' else ''}")


COMMANDS = (status_command, results_command)
