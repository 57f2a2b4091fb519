"""A PostgreSQL database that refuses writes for a while (a standby after a failover, or
``default_transaction_read_only`` on): a real `mammo worker` drops nothing, says so in
`mammo status --health`, and finishes every image once the database is writable again,
without a restart.

Before, the refusal (SQLSTATE 25006, an ``InternalError``) failed each chunk "unexpectedly":
its message was acknowledged and gone, its images stayed ``queued`` looking sent, health
said all was well; and a pooled connection opened while the setting was on kept refusing
after it was turned off, until the worker was restarted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, select, text
from sqlalchemy.exc import InternalError

from producer.cli import commands_query
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine
from shared.db.schema import Image
from shared.synthetic import make_exam_set
from tests.helpers.cli import run_cli
from tests.helpers.db import tally
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def _admin(url: str) -> Iterator[psycopg.Connection]:
    parsed = make_url(url)
    with psycopg.connect(host=parsed.host, port=parsed.port, user="postgres",
                         dbname="postgres", autocommit=True) as conn:
        yield conn


def _read_only(url: str, on: bool, *, cut: bool = False) -> None:
    """``ALTER DATABASE`` (the test's own); with ``cut``, end the sessions open on it, which
    a failover does (and which makes them read the setting again)."""
    name = make_url(url).database
    with _admin(url) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                     f'{"on" if on else "off"}')
        if cut:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_a_pooled_connection_opened_read_only_is_discarded_once_writes_pass(
        settings: Settings, postgres_url: str) -> None:
    engine = create_db_engine(settings.model_copy(update={"database_url": postgres_url}))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x int)"))
        _read_only(postgres_url, True, cut=True)
        with engine.connect() as conn:  # opened read-only, then back in the pool
            assert conn.scalar(text("SHOW default_transaction_read_only")) == "on"
        _read_only(postgres_url, False)
        with pytest.raises(InternalError) as refused, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        assert refused.value.connection_invalidated  # discarded, not pooled again
        with engine.begin() as conn:  # a new connection: the setting now in force
            conn.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        engine.dispose()


def test_a_read_only_database_drops_nothing_and_the_worker_heals_without_a_restart(
        tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path) -> None:
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="2")
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        worker.wait_for_log(" ready.", timeout=90)
        _read_only(postgres_url, True, cut=True)
        # The producer's own session keeps writes on (a startup option beats the database's
        # setting), as the probe's producer role did: the batch is queued while workers refuse.
        writable = make_url(postgres_url).update_query_dict(
            {"options": "-c default_transaction_read_only=off"})
        submit_env = {**env, "MAMMO_DATABASE_URL": writable.render_as_string(False)}
        folder = tmp_path / "in"
        make_exam_set(folder, n_exams=1, seed=5)
        done = run_mammo(["submit", str(folder), "--json"], submit_env, tmp_path)
        assert done.returncode == 0, done.stderr
        n = json.loads(done.stdout)["queued"]

        def health() -> tuple[int, dict[str, object]]:
            result = run_mammo(["status", "--health", "--format", "json"], env, tmp_path)
            return result.returncode, json.loads(result.stdout)[0]

        wait_for(lambda: health()[0] == 7, timeout=40, what="status --health to exit 7",
                 on_timeout=worker.log)
        failure = str(health()[1]["save_failure"])
        assert "the database refuses writes (read-only: a standby, or " \
            "default_transaction_read_only on)" in failure, failure
        engine = create_engine(postgres_url)
        try:
            with engine.connect() as conn:  # nothing dropped, nothing charged
                assert conn.execute(select(Image.state, Image.attempts)).all() == \
                    [("queued", 0)] * n
        finally:
            engine.dispose()

        _read_only(postgres_url, False)  # no restart, no session cut
        wait_for(lambda: tally(postgres_url).done == n, timeout=60,
                 what="every image done once writable", on_timeout=worker.log)
    finally:
        worker.stop()
    t = tally(postgres_url)
    assert (t.done, t.failed, t.predictions, t.max_predictions_per_image) == (n, 0, n, 1), t
    log = worker.log()
    assert "raised unexpected" not in log, log
    assert "refuses writes" in log, log


def test_health_behind_a_table_lock_gives_up_with_exit_7_naming_the_lock(
        postgres_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # It waited for the whole lock (200 s in the probe), printing nothing.
    monkeypatch.setattr(commands_query, "HEALTH_LOCK_WAIT_S", 1)
    urls = {"database_url": postgres_url, "broker_url": redis_url}
    assert run_cli(["status", "--health"], monkeypatch, tmp_path, **urls).exit_code == 0
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as locker:
        locker.execute("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = run_cli(["status", "--health"], monkeypatch, tmp_path, **urls)
        waited = time.monotonic() - started
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE, result.output
    assert waited < 15, waited
    assert "canceling statement due to lock timeout" in result.stderr, result.stderr
    assert "Another session holds a lock on a table this command reads" in result.stderr
