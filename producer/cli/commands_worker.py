"""``mammo worker``: a Celery worker (prefork) that runs the CNN on queued chunks."""

from __future__ import annotations

import shutil
import subprocess

import click
from celery import Celery

from models.activation import model_for
from models.registry import verify_model
from producer.cli.commands_submit import require_broker
from producer.cli.context import CliContext, pass_cli
from producer.cli.exit_codes import ExitCode
from shared.config import LOG_LEVELS
from shared.extras import WORKER, require
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.queue import QUEUE_NAME


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
@pass_cli
def worker_command(cli: CliContext, concurrency: int | None, queues: str, loglevel: str | None,
                   max_tasks_per_child: int, hostname: str | None) -> None:
    """Start a worker that consumes chunks from the broker until stopped (SIGTERM: warm).

    Run as many as you like, on as many machines: they coordinate through the database.
    The model is loaded once per process, after the fork.

    \b
    Example:
        MAMMO_BROKER_URL=redis://redis:6379/0 \\
        MAMMO_DATABASE_URL=postgresql+psycopg://mammo@db/mammo \\
        mammo worker --concurrency 2
    """
    require(WORKER, needed_for="`mammo worker`")
    queues = checked_queues(cli.celery, queues)
    require_broker(cli, "worker")
    with cli.sessions() as session:  # migrates before children start racing for it
        spec = model_for(cli.settings, session)  # fail in one line now, not in every child
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

    app = cli.celery
    # A producer gives up on the broker after a few tries (exit 8, nothing queued); a
    # worker must outlive a Redis restart or failover, however long: after 3 tries Celery
    # stops the worker with exit 0, and a site would be left without workers.
    app.conf.broker_connection_max_retries = None
    register_tasks(app, WorkerRuntime(cli.settings, model_spec=spec), warm_up=True, gpus=gpus)
    install_sweeper(app, cli.settings)
    app.set_default()  # pool processes resolve tasks through the default app
    argv = ["worker", f"--concurrency={processes}", "--pool=prefork", f"--queues={queues}",
            f"--loglevel={loglevel or cli.settings.log_level}", "--without-mingle",
            "--without-gossip"]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


COMMANDS = (worker_command,)
