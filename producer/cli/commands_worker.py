"""``mammo worker``: a Celery worker (prefork) that runs the CNN on queued chunks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import click
from celery import Celery

from models.activation import model_for
from models.registry import ModelSpec, verify_model
from producer.cli.commands_submit import require_broker, warn_if_broker_evicts
from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from producer.cli.interrupts import sigterm_as_ctrl_c
from shared.config import LOG_LEVELS
from shared.errors import BrokerUnavailableError
from shared.extras import WORKER, require
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.logs import celery_logs_in_utc
from shared.queue import QUEUE_NAME
from shared.reachability import wait_until_reachable
from shared.urls import redact_url


def visible_gpus() -> int:
    """Count GPUs without importing TensorFlow in the parent (that would break the fork)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def checked_queues(app: Celery, given: str) -> str:
    """``given`` (comma-separated) as Celery's ``--queues``, or a one-line usage error (exit
    2) naming the configured queues: Celery itself would stop with a traceback."""
    configured = [queue.name for queue in app.conf.task_queues or ()]
    wanted = list(dict.fromkeys(name.strip() for name in given.split(",") if name.strip()))
    unknown = [name for name in wanted if name not in configured]
    if wanted and not unknown:
        return ",".join(wanted)
    what = (f"unknown queue {', '.join(repr(n) for n in unknown)}" if unknown
            else "no queue named")
    click.secho(f"error: -Q/--queues: {what}; the configured queue"
                f"{'s are' if len(configured) > 1 else ' is'}: {', '.join(configured)}",
                err=True, fg="red")
    raise click.exceptions.Exit(ExitCode.USAGE)


def _servers_checked(cli: CliContext) -> ModelSpec:
    """Reach the broker, then the database (migrating it), and find the model there."""
    require_broker(cli, "worker", warn_eviction=False)  # warned once, after the wait
    with cli.sessions() as session:  # migrates before children start racing for it
        return model_for(cli.settings, session)  # fail in one line now, not in every child


def _awaited(cli: CliContext) -> Callable[[Exception], str | None]:
    """Which server an unreachable-server error is about (password masked); None for a
    SQLite file, which has no server to wait for."""
    def awaited(exc: Exception) -> str | None:
        if isinstance(exc, BrokerUnavailableError):
            return f"the message broker at {redact_url(cli.celery.conf.broker_url)}"
        if cli.settings.database_url.startswith("sqlite"):
            return None
        return f"the database at {redact_url(cli.settings.database_url)}"
    return awaited


def model_once_servers_answer(cli: CliContext, max_wait_s: float | None) -> ModelSpec:
    """The model to run, once the broker and the database answer.

    A worker is a service: started before Redis or PostgreSQL are up (a boot, a power
    cut), it waits for them, saying so, as it already outlives their outages once running,
    rather than exit and stay gone where no service manager restarts it. A setting that no
    wait can fix ends it at once, with its message and exit code. Ctrl-C or SIGTERM while
    it waits stops it with exit 0: nothing was started, nothing taken from the queue.
    """
    try:
        with sigterm_as_ctrl_c():
            return wait_until_reachable(lambda: _servers_checked(cli), awaited=_awaited(cli),
                                        who="the worker", max_wait_s=max_wait_s)
    except KeyboardInterrupt:
        click.echo("mammo worker: stopped before it started; nothing was taken from the "
                   "queue", err=True)
        raise click.exceptions.Exit(ExitCode.OK) from None


@click.command("worker")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=None,
              help="Worker processes, each with its own copy of the model "
                   "[default: 1 per GPU, else 1: TensorFlow already uses every CPU core].")
@click.option("--queues", "-Q", default=QUEUE_NAME, show_default=True,
              help="Comma-separated queues to consume.")
@click.option("--loglevel", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="Celery's log level [default: MAMMO_LOG_LEVEL, as `mammo --log-level` "
                   "sets it].")
@click.option("--max-tasks-per-child", type=int, default=0,
              help="Recycle a child after this many chunks (0: never).")
@click.option("--hostname", "-n", default=None, help="Worker node name (Celery -n).")
@click.option("--wait-for-servers", "wait_for_servers_s", type=click.IntRange(min=0),
              default=None, metavar="SECONDS",
              help="At start, how long to wait for a broker or database that cannot be "
                   "reached (connection refused or timed out, PostgreSQL starting up, Redis "
                   "loading its data): the worker tries again after 1 s, doubling to 30 s, "
                   "logs each try, and starts once both answer; after SECONDS it exits 8 "
                   "(broker) or 7 (database). [default: wait for ever; 0: exit at once]")
@pass_cli
def worker_command(cli: CliContext, concurrency: int | None, queues: str, loglevel: str | None,
                   max_tasks_per_child: int, hostname: str | None,
                   wait_for_servers_s: int | None) -> None:
    """Start a worker that consumes chunks from the broker until stopped (SIGTERM: warm).

    Run as many as you like, on as many machines: they coordinate through the database.
    The model is loaded once per process, after the fork.

    Started before Redis or PostgreSQL are up (a boot, a power cut), it waits for them
    (see --wait-for-servers). A setting no wait can fix (a wrong password, an unknown
    database or role, a bad URL, a certificate that does not verify) ends it at once with
    its message: exit 4, 7 or 8.

    \b
    Example:
        MAMMO_BROKER_URL=redis://redis:6379/0 \\
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo \\
        mammo worker --concurrency 2
    """
    require(WORKER, needed_for="`mammo worker`")
    queues = checked_queues(cli.celery, queues)
    spec = model_once_servers_answer(cli, wait_for_servers_s)
    warn_if_broker_evicts(cli, prefix="mammo worker: warning: ")
    verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    # Children must not inherit live connections: a child closing its copy at exit would
    # terminate the parent's session on the server.
    cli.engine.dispose()
    gpus = visible_gpus()
    processes = concurrency or max(gpus, 1)
    click.echo(f"mammo worker: model {spec.name} {spec.version}, device "
               f"{f'gpu x{gpus}' if gpus else 'cpu'}, {processes} process(es)", err=True)

    from worker.runtime import WorkerRuntime
    from worker.sweeper import install_sweeper
    from worker.tasks import register_tasks
    from worker.write_refusals import install_write_refusal_retry

    app = cli.celery
    # A producer gives up on the broker after a few tries (exit 8, nothing queued); a
    # worker must outlive a Redis restart or failover, however long: after 3 tries Celery
    # stops the worker with exit 0, and a site would be left without workers.
    app.conf.broker_connection_max_retries = None
    celery_logs_in_utc(app)  # Celery's own handlers (a pool process's death) as ours
    register_tasks(app, WorkerRuntime(cli.settings, model_spec=spec), warm_up=True, gpus=gpus)
    install_sweeper(app, cli.settings)
    install_write_refusal_retry(app)  # a full Redis or a replica: reconnect, never exit
    app.set_default()  # pool processes resolve tasks through the default app
    argv = ["worker", f"--concurrency={processes}", "--pool=prefork", f"--queues={queues}",
            f"--loglevel={loglevel or cli.settings.log_level}", "--without-mingle",
            "--without-gossip"]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    code = _celery_worker(app, argv)
    if code:
        click.echo(f"mammo worker: stopped with exit {code}; the log above says why (Celery "
                   "logs an \"Unrecoverable error\" with its cause)", err=True)
        raise SystemExit(code)


def _celery_worker(app: Celery, argv: list[str]) -> int:
    """Run Celery's ``worker`` command on ``app``; its exit status.

    ``app.worker_main`` (and ``app.start``) drop the status that click hands back, so a
    worker stopped by an "Unrecoverable error" (a broker user refused a command it needs, a
    bootstep that failed) exited 0, and a service manager restarting on failure left it
    down.
    """
    from celery.bin.celery import celery

    celery.params[0].default = app  # what app.start does: the -A option's default
    try:
        code = celery.main(args=argv, standalone_mode=False)
    finally:
        celery.params[0].default = None
    return code if isinstance(code, int) else 0


COMMANDS = (worker_command,)
