"""A real Redis whose maxmemory-policy evicts any key (allkeys-*): queued messages vanish.

Probe: Redis under ``allkeys-lru``, 80 images submitted with no worker, maxmemory lowered
to 3 MB and other keys written: the whole queue was evicted, and `mammo status --health`
said broker "reachable", queue depth 0, messages lost 0, and exited 0; `mammo recover`
re-sent nothing for MAMMO_REQUEUE_AFTER_S (600 s). Health now exits 8 and says what to set,
with the keys evicted; submit and the worker warn at start (a warning, not a refusal).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from celery import Celery

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.queue import QUEUE_NAME, create_celery_app
from shared.synthetic import make_exam_set
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo
from tests.helpers.services import PrivateRedis

pytestmark = pytest.mark.integration

EVICTS = ("Redis evicts keys (maxmemory-policy allkeys-lru): queued messages can vanish; set "
          "maxmemory-policy noeviction")


def _client(server: PrivateRedis, db: int = 0) -> redis.Redis:
    return redis.Redis(port=server.port, db=db)


def _health(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, object], str]:
    done = run_mammo(["status", "--health", "--format", "json"], env, cwd, timeout=60)
    return done.returncode, json.loads(done.stdout)[0], done.stderr


def _press_memory(server: PrivateRedis) -> int:
    """Lower maxmemory to just above what Redis holds and write 4 KB keys into another
    database until it evicts (as the probe did); the keys it evicted."""
    client = _client(server)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 512 * 1024)
    other = _client(server, db=1)
    for n in range(5000):
        other.set(f"filler:{n}", b"x" * 4096)
        if n % 50 == 0 and int(client.info("stats")["evicted_keys"]):
            break
    return int(client.info("stats")["evicted_keys"])


def test_health_fails_and_submit_warns_while_redis_may_evict_the_queue(
        private_redis: PrivateRedis, tmp_path: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=2, seed=81)
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    patient_id_key="k" * 32, chunk_size="1")
    client = _client(private_redis)
    client.config_set("maxmemory-policy", "allkeys-lru")

    submitted = run_mammo(["submit", str(tmp_path / "in")], env, tmp_path, timeout=90)
    assert submitted.returncode == ExitCode.OK, submitted.stderr  # a warning, not a refusal
    assert submitted.stderr.count(f"warning: {EVICTS}") == 1, submitted.stderr

    code, health, stderr = _health(env, tmp_path)
    assert code == ExitCode.BROKER_UNAVAILABLE, stderr
    assert health["broker"] == "evicting keys (maxmemory-policy allkeys-lru)"
    assert (health["broker_evicted_keys"], health["broker_eviction"]) == (0, EVICTS)
    assert f"warning: {EVICTS}" in stderr

    evicted = _press_memory(private_redis)
    assert evicted > 0
    code, health, stderr = _health(env, tmp_path)
    assert code == ExitCode.BROKER_UNAVAILABLE, stderr
    assert health["broker_evicted_keys"] >= evicted  # type: ignore[operator]
    assert str(health["broker_eviction"]).startswith(f"{EVICTS}; it has evicted ")
    assert "`mammo recover --older-than 0` re-sends the messages" in stderr

    # Fixed: the probe passes; the count stays until a restart, and so does the advice.
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 0)
    code, health, stderr = _health(env, tmp_path)
    assert code == ExitCode.OK, stderr
    assert health["broker"] == "reachable"
    assert "under an earlier maxmemory-policy (now noeviction)" in str(health["broker_eviction"])

    # volatile-*: what a managed Redis often defaults to; it never evicts the queue's keys.
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_resetstat()
    code, health, stderr = _health(env, tmp_path)
    assert code == ExitCode.OK, stderr
    assert (health["broker"], health["broker_evicted_keys"], health["broker_eviction"]) == (
        "reachable", 0, None)
    submitted = run_mammo(["submit", str(tmp_path / "in")], env, tmp_path, timeout=90)
    assert "Redis evicts keys" not in submitted.stderr


def test_no_key_the_queue_relies_on_has_a_ttl(private_redis: PrivateRedis,
                                              tmp_path: Path) -> None:
    """Why ``volatile-*`` is safe: it evicts only keys with a TTL, and kombu sets none on
    the queue's priority lists, its bindings, or the unacked hash and index that hold a
    message a worker has taken and not yet acknowledged."""
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    patient_id_key="k" * 32, chunk_size="1")
    # Two priorities: two of the priority lists hold messages.
    for seed, priority in ((82, "routine"), (83, "urgent")):
        make_exam_set(tmp_path / priority, n_exams=1, seed=seed)
        done = run_mammo(["submit", str(tmp_path / priority), "--priority", priority], env,
                         tmp_path, timeout=90)
        assert done.returncode == ExitCode.OK, done.stderr
    app: Celery = create_celery_app(Settings(  # type: ignore[call-arg]
        broker_url=private_redis.url, _env_file=None))
    with app.connection_for_write() as conn:
        taken = conn.default_channel.basic_get(QUEUE_NAME, no_ack=False)  # unacked now
        assert taken is not None
        client = _client(private_redis)
        keys = {key.decode(): client.ttl(key) for key in client.keys("*")}
    assert {"unacked", "unacked_index", "_kombu.binding.mammo"} <= set(keys), keys
    assert any(key.startswith(QUEUE_NAME) for key in keys), keys
    assert all(ttl == -1 for ttl in keys.values()), keys  # -1: no TTL


def test_a_worker_warns_once_at_start_while_redis_may_evict_the_queue(
        private_redis: PrivateRedis, tmp_path: Path, tiny_model_dir: Path) -> None:
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                    model=str(tiny_model_dir), patient_id_key="k" * 32)
    _client(private_redis).config_set("maxmemory-policy", "allkeys-random")
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        worker.wait_for_log("mammo worker: model", timeout=120)
        assert worker.proc.poll() is None, worker.log()  # it works on
    finally:
        worker.stop()
    assert worker.log().count(
        "mammo worker: warning: Redis evicts keys (maxmemory-policy allkeys-random): queued "
        "messages can vanish; set maxmemory-policy noeviction") == 1, worker.log()
