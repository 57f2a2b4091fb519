"""A chunk that meets a database outage is retried through Celery, and `mammo run` waits for
the retry instead of for ever."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.schema import Image, Prediction
from shared.errors import DatabaseUnavailableError
from shared.queue import TASK_PROCESS_CHUNK, create_celery_app
from shared.synthetic import make_exam_set
from tests.helpers.processes import mammo_env
from worker.runtime import WorkerRuntime

# `mammo run` in a process of its own (the retry's thread must find the app there, not in a
# test process some earlier test set up), its database refusing the first chunk's results
# once, as SQLite on a full disk does: the first INSERT of predictions fails.
_DISK_FULL_ONCE = """
import sqlite3, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
refused = []
@event.listens_for(Engine, "before_cursor_execute")
def disk_full_once(conn, cursor, statement, *args):
    if not refused and statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS"):
        refused.append(statement)
        raise sqlite3.OperationalError("database or disk is full")
from producer.cli.main import main
sys.argv = ["mammo", "run", sys.argv[1]]
main()
"""


@pytest.mark.timeout(200)
def test_a_run_whose_save_met_a_full_disk_retries_the_chunk_and_finishes(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    make_exam_set(tmp_path / "night", n_exams=2, seed=12)
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'm.db'}", model=str(tiny_model_dir),
                    report_dir=str(tmp_path / "reports"), chunk_size="4")
    try:
        done = subprocess.run([sys.executable, "-c", _DISK_FULL_ONCE, str(tmp_path / "night")],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=150, check=False)
    except subprocess.TimeoutExpired as exc:
        said = (exc.stderr or b"").decode(errors="replace")[-3000:]
        pytest.fail(f"the run never finished after the database came back:\n{said}")
    assert done.returncode == ExitCode.OK, done.stderr
    assert "4 image(s) handed back, attempts refunded" in done.stderr  # the outage was met
    assert "never registered" not in done.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        states = Counter(conn.execute(select(Image.state, Image.attempts)).all())
        predictions = conn.execute(select(func.count()).select_from(Prediction)).scalar_one()
    engine.dispose()
    assert states == {("done", 1): 8}  # the refused chunk re-run once, its attempt refunded
    assert predictions == 8


def test_a_chunk_retries_a_database_outage_for_about_four_minutes(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # README: "up to about 4 minutes" of retries, then the chunk fails with its reason.
    import worker.tasks

    def outage(image_ids: list[int], **_: object) -> None:
        raise DatabaseUnavailableError("disk full")

    monkeypatch.setattr(worker.tasks, "process_chunk", outage)
    app = create_celery_app(settings.embedded())
    worker.tasks.register_tasks(app, WorkerRuntime(settings))
    task = app.tasks[TASK_PROCESS_CHUNK]
    real_retry, waits = task.retry, []

    def retry(*args: Any, countdown: float, **kwargs: Any) -> Any:
        waits.append(countdown)
        return real_retry(*args, countdown=countdown, **kwargs)

    monkeypatch.setattr(task, "retry", retry)
    totals = []
    for _ in range(20):  # the waits are jittered: every draw must keep to the budget
        waits.clear()
        outcome = task.apply(args=[[1, 2, 3, 4]])  # each retry at once, its wait noted
        assert outcome.failed() and isinstance(outcome.result, DatabaseUnavailableError)
        assert len(waits) == worker.tasks.TRANSIENT_RETRIES + 1  # the last one gives up
        totals.append(sum(waits[:-1]))
    assert min(totals) >= 3 * 60 and max(totals) <= 5 * 60, totals
    # An embedded run's polling loop waits on the chunk at least as long as it may retry.
    assert max(totals) < worker.tasks.transient_budget_s() - 60, totals


def test_an_embedded_worker_leaves_no_message_for_the_next_one_in_the_process(
        settings: Settings) -> None:
    # kombu's in-memory queue lives as long as the process: what one run left there (a
    # chunk's retry still waiting when the run ended) was taken by the next embedded worker
    # in the process, as ids of its own database's images.
    import kombu.transport.memory

    from worker.embedded import embedded_worker

    app = create_celery_app(settings.embedded())
    with embedded_worker(app, WorkerRuntime(settings)):
        for _ in range(3):  # held by the worker until their time, then handed back at stop
            app.send_task(TASK_PROCESS_CHUNK, args=[[1, 2]], countdown=3600)
    left = {name: queue.qsize() for name, queue in kombu.transport.memory.Channel.queues.items()}
    assert sum(left.values()) == 0, left
