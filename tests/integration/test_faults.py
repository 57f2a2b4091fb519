"""Fault injection with real processes: nothing lost, nothing doubled.

Workers are real `mammo worker` subprocesses (prefork). Each test injects one fault:
SIGKILLed children, a Redis restart that loses the queue, a PostgreSQL outage, a poison
image that kills its worker every time, and two producers racing on one folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.synthetic import make_exam_set
from tests.helpers.db import tally
from tests.helpers.processes import (
    MAMMO,
    WatchProcess,
    WorkerProcess,
    child_pids,
    forkservers_of,
    mammo_env,
    run_mammo,
    wait_for,
)
from tests.helpers.reliability import Evidence
from tests.helpers.services import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.integration

FAST_RECOVERY = {"sweep_interval_s": "2", "requeue_after_s": "5"}


def _drain(env: dict[str, str], cwd: Path, url: str, n: int, *, what: str,
           timeout: float = 240, log_name: str = "worker.log") -> str:
    """Run one `mammo worker` until ``n`` images are terminal; return its log."""
    worker = WorkerProcess(env, cwd, cwd / log_name, "--concurrency", "1")
    try:
        wait_for(lambda: tally(url).terminal == n, timeout=timeout, what=what,
                 on_timeout=worker.log)
    finally:
        worker.stop()
    return worker.log()


def _process_table(pids: list[int]) -> str:
    return subprocess.run(["ps", "-o", "pid,ppid,stat,rss,args", "-p", ",".join(map(str, pids))],
                          capture_output=True, text=True, check=False).stdout


def _submit(folder: Path, env: dict[str, str], cwd: Path) -> int:
    done = run_mammo(["submit", str(folder), "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["batch_id"])


def _assert_exactly_once(url: str, n: int) -> None:
    t = tally(url)
    assert t.images == n and t.done == n, t
    assert t.predictions == n and t.max_predictions_per_image == 1, t


def test_sigkilled_children_lose_and_double_nothing(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=50, seed=21)
    assert len(files) == 200
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="8", max_attempts="6", **FAST_RECOVERY)
    marker = f"FAULT_TEST={tmp_path}"  # tells this test's processes from any other's
    env["FAULT_TEST"] = str(tmp_path)
    _submit(tmp_path / "in", env, tmp_path)
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "2")
    try:
        kills = 0
        deadline = time.monotonic() + 240
        while kills < 3 and time.monotonic() < deadline:
            t = tally(postgres_url)
            children = child_pids(worker.proc.pid)
            if t.done > 20 * (kills + 1) and children:
                os.kill(children[kills % len(children)], signal.SIGKILL)
                kills += 1
            time.sleep(0.3)
        assert kills == 3, worker.log()
        wait_for(lambda: tally(postgres_url).terminal == 200, timeout=240,
                 what="200 images after 3 SIGKILLs", on_timeout=worker.log)
        # A killed child's decoders (its forkserver and the 2 processes it forked) die with
        # it: only the two live children's remain.
        wait_for(lambda: len(forkservers_of(marker)) <= 2 * 3, timeout=20,
                 what="the killed children's forkservers to exit",
                 on_timeout=lambda: _process_table(forkservers_of(marker)))
    finally:
        worker.stop()
    _assert_exactly_once(postgres_url, 200)
    reliability.fault("3 worker children SIGKILLed mid-chunk in a 200-image batch",
                      expected=200, tally=tally(postgres_url))


def test_redis_restart_without_persistence_loses_nothing(
    tmp_path: Path, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    make_exam_set(tmp_path / "in", n_exams=20, seed=22)
    # The workers' ordinary wait (MAMMO_REQUEUE_AFTER_S, 600 s) is left as shipped: the
    # sweeper sees that Redis started after these images were queued and re-sends them at
    # its next sweep.
    env = mammo_env(broker_url=redis.url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="4", sweep_interval_s="2")
    _submit(tmp_path / "in", env, tmp_path)
    time.sleep(1.5)  # Redis counts its uptime in whole seconds
    redis.kill()  # every queued message is gone
    redis.start()
    try:
        log = _drain(env, tmp_path, postgres_url, 80, timeout=120,
                     what="the sweeper to re-queue the lost batch")
    finally:
        redis.kill()
    assert "sweeper: re-queued 80 image(s)" in log and "the broker started" in log, log
    _assert_exactly_once(postgres_url, 80)
    reliability.fault("Redis restarted without persistence after submit (queue lost)",
                      expected=80, tally=tally(postgres_url))


def test_a_whole_worker_killed_mid_chunk_is_recovered_within_a_lease(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    # SIGKILL to the whole worker (the OOM killer taking the parent, a host crash): nobody
    # hands its chunk back. Its claims stop being renewed, and the other worker's sweeper
    # re-sends the images once the lease (4 heartbeats) has passed, not after the chunk's
    # whole time limit (16 minutes by default, before heartbeats).
    make_exam_set(tmp_path / "in", n_exams=20, seed=24)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="40", claim_heartbeat_s="2", **FAST_RECOVERY)
    _submit(tmp_path / "in", env, tmp_path)
    first = WorkerProcess(env, tmp_path, tmp_path / "first.log", "--concurrency", "1")
    try:
        deadline = time.monotonic() + 120
        while tally(postgres_url).processing == 0:  # a chunk lasts about a second: look often
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.05)
        first.kill()
        first.proc.wait(timeout=30)
        assert tally(postgres_url).processing > 0  # held by a worker that no longer exists
    finally:
        first.stop()
    log = _drain(env, tmp_path, postgres_url, 80, timeout=90, log_name="second.log",
                 what="the dead worker's chunk to be re-sent after its lease")
    assert "claimed by a worker that stopped" in log
    _assert_exactly_once(postgres_url, 80)
    reliability.fault("a whole worker SIGKILLed mid-chunk (claims re-sent after the lease)",
                      expected=80, tally=tally(postgres_url))


def test_a_worker_outlives_a_long_redis_outage(
    tmp_path: Path, postgres_url: str, tiny_model_dir: Path,
) -> None:
    # Celery's default of 3 reconnection tries (2 + 4 + 6 s) once ended the worker with
    # exit 0 when Redis was down for longer: a site left silently without workers.
    redis = PrivateRedis(tmp_path)
    redis.start()
    make_exam_set(tmp_path / "in", n_exams=2, seed=23)
    env = mammo_env(broker_url=redis.url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="4")
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        wait_for(lambda: " ready." in worker.log(), timeout=120, what="the worker to start",
                 on_timeout=worker.log)
        redis.kill()
        time.sleep(20)
        assert worker.proc.poll() is None, worker.log()
        redis.start()
        _submit(tmp_path / "in", env, tmp_path)
        wait_for(lambda: tally(postgres_url).terminal == 8, timeout=120,
                 what="the batch after Redis came back", on_timeout=worker.log)
        # The drop is logged; Celery's notice about a Celery 6 default is not, at every drop.
        assert "Connection to broker lost" in worker.log()
        assert "In Celery 5.1 we introduced" not in worker.log()
    finally:
        worker.stop()
        redis.kill()
    _assert_exactly_once(postgres_url, 8)


def test_postgres_outage_is_waited_out(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    pg = PrivatePostgres()
    pg.start()
    n = 400
    make_exam_set(tmp_path / "in", n_exams=n // 4, seed=23)
    env = mammo_env(broker_url=redis_url, database_url=pg.url, model=str(tiny_model_dir),
                    chunk_size="4", **FAST_RECOVERY)
    worker = None
    try:
        _submit(tmp_path / "in", env, tmp_path)
        worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
        wait_for(lambda: tally(pg.url).done >= 8, timeout=120, what="the batch to start",
                 on_timeout=worker.log)
        pg.stop()  # mid-batch: chunks in flight meet the outage
        time.sleep(20)
        pg.start()
        wait_for(lambda: tally(pg.url).terminal == n, timeout=300,
                 what="all images after a 20 s database outage", on_timeout=worker.log)
        log = worker.log()
        assert "retry" in log.lower(), "the outage was never noticed: not a mid-batch fault"
        _assert_exactly_once(pg.url, n)
        reliability.fault("PostgreSQL stopped for 20 s mid-batch", expected=n,
                          tally=tally(pg.url))
    finally:
        if worker:
            worker.stop()
        pg.remove()


POISON_HOOK = '''
import os, signal
import shared.imaging.readers as readers
_decode = readers.decode
def decode(path, **kwargs):
    if "POISON" in str(path):  # simulates a decoder that segfaults on this file
        os.kill(os.getpid(), signal.SIGKILL)
    return _decode(path, **kwargs)
readers.decode = decode
'''


def test_poison_image_is_quarantined_and_its_chunk_mates_finish(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    files = make_exam_set(tmp_path / "in", n_exams=3, seed=24)
    files[4].rename(files[4].with_name("POISON-" + files[4].name))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_HOOK)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="6", max_attempts="2", **FAST_RECOVERY)
    _submit(tmp_path / "in", env, tmp_path)
    worker_env = {**env, "PYTHONPATH": str(hook)}
    _drain(worker_env, tmp_path, postgres_url, 12, what="the poison image to be quarantined")
    t = tally(postgres_url)
    assert t.done == 11 and t.predictions == 11 and t.max_predictions_per_image == 1
    [(source, code)] = t.failures.items()
    assert "POISON-" in source and code == "poison"
    reliability.fault("an image that SIGKILLs its worker on every attempt (ends `poison`)",
                      expected=12, tally=t)


def test_two_producers_and_the_watcher_racing_on_one_folder(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    make_exam_set(tmp_path / "in", n_exams=10, seed=25)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="8", watch_quiet_period_s="0.5", watch_poll_interval_s="0.5")
    run_mammo(["db", "upgrade"], env, tmp_path)
    cmd = [*MAMMO, "submit", str(tmp_path / "in"), "--json"]
    # All three start together; the watcher's start-up scan meets the producers' inserts.
    racers = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    watcher = WatchProcess(env, tmp_path, tmp_path / "in")
    try:
        outs = [r.communicate(timeout=120) for r in racers]
        assert all(r.returncode == 0 for r in racers), outs
        by_producers = sum(json.loads(out)["queued"] for out, _ in outs)
        _drain(env, tmp_path, postgres_url, 40, timeout=180, what="the raced batch")
        # Every file is registered by now (40 terminal rows). The watcher also follows, and
        # logs "done" for, files a producer queued first, so wait per file for its own.
        wait_for(lambda: _watcher_files(watcher, "queued") <= _watcher_files(watcher, "done"),
                 timeout=60, what="the watcher to see its images done", on_timeout=watcher.log)
        time.sleep(2)  # a late second registration by the watcher would show up here
    finally:
        assert watcher.stop() == 0, watcher.log()
    by_watcher = watcher.log().count(" queued ")
    assert by_producers + by_watcher == 40, (by_producers, watcher.log())  # each file once
    t = tally(postgres_url)
    _assert_exactly_once(postgres_url, 40)
    # Who wins is up to the scheduler (on the 2-core box the watcher usually registers
    # every file first, and both producers then meet ON CONFLICT on every row).
    reliability.fault("two `mammo submit` and a `mammo watch` on one folder at once",
                      expected=40, tally=t, queued_by_producers=by_producers,
                      queued_by_watcher=by_watcher)


def _watcher_files(watcher: WatchProcess, verb: str) -> set[str]:
    return set(re.findall(rf" {verb} (\S+) \(image \d+\)", watcher.log()))


def test_sigterm_during_a_chunk_loses_nothing(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    make_exam_set(tmp_path / "in", n_exams=50, seed=26)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="8")
    _submit(tmp_path / "in", env, tmp_path)
    first = WorkerProcess(env, tmp_path, tmp_path / "first.log", "--concurrency", "1")
    try:
        wait_for(lambda: tally(postgres_url).done >= 16, timeout=120, what="work under way",
                 on_timeout=first.log)
        first.kill(signal.SIGTERM)  # warm shutdown: the chunk in hand finishes, the rest waits
        first.proc.wait(timeout=120)
    finally:
        first.stop()
    at_stop = tally(postgres_url)
    assert at_stop.done < 200, "the batch finished before SIGTERM: nothing was tested"
    assert "Warm shutdown" in first.log()
    _drain(env, tmp_path, postgres_url, 200, what="the rest after a restart",
           log_name="second.log")
    _assert_exactly_once(postgres_url, 200)
    reliability.fault("SIGTERM to a worker mid-chunk, then a new worker", expected=200,
                      tally=tally(postgres_url))
