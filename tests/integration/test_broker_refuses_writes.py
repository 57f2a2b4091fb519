"""A real Redis that answers and refuses writes: full at its maxmemory (noeviction), or a
read-only replica.

Every `mammo worker` exited 1 at the first refused write (an ack, the lock it takes at each
connect: "Unrecoverable error: OutOfMemoryError"), and one started against a full Redis
exited again ~10 s later, every restart; `mammo submit` said "Cannot reach the message
broker ... Check MAMMO_BROKER_URL and that Redis is running", and `mammo status --health`
said "reachable" and exited 0.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from producer.cli.exit_codes import ExitCode
from shared.synthetic import make_exam_set
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for
from tests.helpers.services import PrivateRedis

pytestmark = pytest.mark.integration


def _client(server: PrivateRedis) -> redis.Redis:
    return redis.Redis(port=server.port)


def _fill(server: PrivateRedis) -> None:
    client = _client(server)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write refused: OOM


def _free(server: PrivateRedis) -> None:
    _client(server).config_set("maxmemory", 0)


def _states(database: Path) -> list[tuple[str, int, int]]:
    """(state, attempts, predictions) of each image."""
    with create_engine(f"sqlite:///{database}").connect() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(text(
            "SELECT state, attempts, (SELECT count(*) FROM predictions p "
            "WHERE p.image_id = images.id) FROM images ORDER BY id"))]


def _done(database: Path, n: int) -> bool:
    rows = _states(database)
    return len(rows) == n and all(state == "done" for state, _, _ in rows)


def _stop_between_writes(worker: WorkerProcess, database: Path) -> None:
    """SIGSTOP the worker at a moment it holds no write lock on the SQLite database.

    Its sweeper writes every few seconds; stopped inside that transaction it would hold the
    lock until SIGCONT, and `mammo submit` would fail "the database is busy" (CI, 711a09b).
    """
    for _ in range(50):
        worker.kill(signal.SIGSTOP)
        probe = sqlite3.connect(database, timeout=0.5)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:
            worker.kill(signal.SIGCONT)
            time.sleep(0.2)
        finally:
            probe.close()
    raise AssertionError("the worker held the database's write lock at each of 50 tries")


def test_a_worker_outlives_a_full_redis_and_works_on_once_it_is_freed(
        private_redis: PrivateRedis, tmp_path: Path, tiny_model_dir: Path) -> None:
    database = tmp_path / "mammo.db"
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{database}",
                    model=str(tiny_model_dir), patient_id_key="k" * 32, chunk_size="4",
                    sweep_interval_s="2", requeue_after_s="5")
    make_exam_set(tmp_path / "a", n_exams=2, seed=71)
    make_exam_set(tmp_path / "b", n_exams=3, seed=72)
    assert run_mammo(["submit", str(tmp_path / "a")], env, tmp_path).returncode == 0
    _fill(private_redis)  # the batch waits in a Redis that refuses every write
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        started = time.monotonic()
        worker.wait_for_log("the message broker refuses writes (maxmemory reached "
                            "(noeviction))", timeout=60)
        # It exited ~10 s after its start, at its first connect; it waits now, and checks.
        wait_for(lambda: time.monotonic() - started > 15, timeout=30, what="15 s")
        assert worker.proc.poll() is None, worker.log()[-3000:]
        _free(private_redis)
        wait_for(lambda: _done(database, 8), timeout=40, what="batch a done",
                 on_timeout=worker.log)

        # Full again with a batch waiting for the worker: its fetch, ack or the next message's
        # is refused. The worker is held (SIGSTOP) from before batch b is sent until Redis is
        # full: a tiny model scored all of b before a `submit` process had even exited, so
        # "wait until b starts, then fill" filled an idle Redis.
        _stop_between_writes(worker, database)
        try:
            assert run_mammo(["submit", str(tmp_path / "b")], env, tmp_path).returncode == 0
            _fill(private_redis)
            assert {s for s, _, _ in _states(database)[8:]} == {"queued"}
        finally:
            worker.kill(signal.SIGCONT)
        refused = worker.log().count("the message broker refuses writes")
        wait_for(lambda: worker.log().count("the message broker refuses writes") > refused,
                 timeout=30, what="the worker meets the full Redis again",
                 on_timeout=worker.log)
        time.sleep(3)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        _free(private_redis)
        wait_for(lambda: _done(database, 20), timeout=40, what="batch b done",
                 on_timeout=worker.log)
    finally:
        _free(private_redis)
        worker.stop()
    log = worker.log()
    assert "Unrecoverable error" not in log
    assert all(attempts == 1 and predictions == 1
               for _, attempts, predictions in _states(database)), _states(database)


def test_submit_and_status_say_a_full_redis_or_a_replica_refuses_writes_and_what_to_do(
        private_redis: PrivateRedis, tmp_path: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=1, seed=73)
    make_exam_set(tmp_path / "sent", n_exams=2, seed=74)
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    patient_id_key="k" * 32, chunk_size="4")
    assert run_mammo(["submit", str(tmp_path / "sent")], env, tmp_path).returncode == 0
    _fill(private_redis)  # two messages wait in it
    submitted = run_mammo(["submit", str(tmp_path / "in")], env, tmp_path, timeout=90)
    assert submitted.returncode == ExitCode.BROKER_UNAVAILABLE, submitted.stderr
    assert "refuses writes: Redis has reached its maxmemory" in submitted.stderr
    assert "Free memory in Redis or raise its maxmemory" in submitted.stderr
    assert "Cannot reach" not in submitted.stderr
    health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path, timeout=60)
    assert health.returncode == ExitCode.BROKER_UNAVAILABLE, health.stderr
    reported = json.loads(health.stdout)[0]
    assert reported["broker"] == "refusing writes: maxmemory reached (noeviction)"
    assert reported["queue_depth"] == 2  # its refused count read as "no queue": 0

    _free(private_redis)  # ...and a replica: what a worker or producer meets after a failover
    primary = PrivateRedis(tmp_path)
    primary.start()
    try:
        _client(private_redis).execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
        submitted = run_mammo(["submit", str(tmp_path / "in")], env, tmp_path, timeout=90)
        assert submitted.returncode == ExitCode.BROKER_UNAVAILABLE, submitted.stderr
        assert "is a read-only replica" in submitted.stderr
        assert "point MAMMO_BROKER_URL at the primary" in submitted.stderr
        health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path,
                           timeout=60)
        assert health.returncode == ExitCode.BROKER_UNAVAILABLE, health.stderr
        assert json.loads(health.stdout)[0]["broker"] == "refusing writes: read-only replica"

        _client(private_redis).execute_command("REPLICAOF", "NO", "ONE")
        health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path,
                           timeout=60)
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)[0]["broker"] == "reachable"
    finally:
        primary.kill()
