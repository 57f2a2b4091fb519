"""Redis over TLS with an ACL user, PostgreSQL over TLS with a password, and no secret in
any log: a real producer, worker and watcher, all at DEBUG, against private servers that
accept nothing else (no plain-text Redis port, PostgreSQL rejects non-TLS TCP clients).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from shared.synthetic import make_exam_set
from tests.helpers.db import tally
from tests.helpers.processes import WatchProcess, WorkerProcess, mammo_env, run_mammo, wait_for
from tests.helpers.reliability import Evidence
from tests.helpers.services import PrivatePostgres, PrivateRedis, free_port
from tests.helpers.tls import make_tls_files

pytestmark = pytest.mark.integration

SECRETS = {
    "broker password": "brk-Pw-7c1e94d0a5",
    "database password": "db-Pw-3f6a2b9e88",
    "pseudonym key": "pseudonym-key-5d0c7a1b2e9f4c3d",
    "SMTP password": "smtp-Pw-91be4f2c07",
}


def test_tls_broker_and_database_with_passwords_and_no_secret_in_any_log(
    tmp_path: Path, tiny_model_dir: Path, reliability: Evidence,
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    redis = PrivateRedis(tmp_path, tls=tls, user=("mammo", SECRETS["broker password"]))
    pg = PrivatePostgres(tls=tls)
    redis.start()
    pg.start()
    worker = watcher = None
    try:
        pg.add_user("mammo", SECRETS["database password"])
        db_url = (f"postgresql+psycopg://mammo:{SECRETS['database password']}@127.0.0.1:"
                  f"{pg.port}/postgres?sslmode=verify-full&sslrootcert={tls.ca}")
        env = mammo_env(
            broker_url=redis.url, database_url=db_url, model=str(tiny_model_dir),
            chunk_size="4", log_level="DEBUG", patient_id_key=SECRETS["pseudonym key"],
            smtp_host="127.0.0.1", smtp_port=str(free_port()), smtp_security="starttls",
            smtp_user="mammo", smtp_password=SECRETS["SMTP password"],
            smtp_from="mammo@example.org", smtp_to="reader@example.org",
            watch_quiet_period_s="0.5", watch_poll_interval_s="0.5")
        _refuses_plain_and_unverified(pg.port, redis.url, tls.ca, env, tmp_path)

        worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1",
                               "--loglevel", "DEBUG")
        make_exam_set(tmp_path / "in", n_exams=2, seed=31)
        submitted = run_mammo(["submit", str(tmp_path / "in"), "--json"], env, tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout)["queued"] == 8
        (tmp_path / "drop").mkdir()
        watcher = WatchProcess(env, tmp_path, tmp_path / "drop")
        watcher.wait_for_log("watching ")
        for path in make_exam_set(tmp_path / "stage", n_exams=1, seed=32):
            shutil.move(path, tmp_path / "drop" / path.name)
        wait_for(lambda: tally(db_url).terminal == 12, timeout=180,
                 what="12 images over TLS", on_timeout=worker.log)
        health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path)
        t = tally(db_url)
    finally:
        if watcher:
            watcher.stop()
        if worker:
            worker.stop()
        redis.kill()
        pg.remove()
    assert t.done == 12 and t.predictions == 12 and t.max_predictions_per_image == 1, t
    assert health.returncode == 0, health.stderr
    assert '"broker": "reachable"' in health.stdout or "reachable" in health.stdout, health.stdout
    captured = {"worker log": worker.log(), "watcher log": watcher.log(),
                "producer output": submitted.stdout + submitted.stderr,
                "status output": health.stdout + health.stderr}
    assert "DEBUG" in captured["worker log"] and "DEBUG" in captured["watcher log"]
    assert "rediss://mammo:**@127.0.0.1" in captured["worker log"]  # Celery's masked banner
    leaks = [(what, where) for what, secret in SECRETS.items()
             for where, text in captured.items() if secret in text]
    assert not leaks, leaks
    reliability.check("Redis rediss:// + ACL user, PostgreSQL TLS verify-full + scram password",
                      images=12, done=t.done)
    reliability.check("no secret in DEBUG logs of worker, watcher, producer, status",
                      secrets=sorted(SECRETS), outputs=sorted(captured), leaks=len(leaks))


def _refuses_plain_and_unverified(pg_port: int, broker_url: str, ca: Path,
                                  env: dict[str, str], cwd: Path) -> None:
    """The servers accept only TLS, and the clients check whom they talk to."""
    with pytest.raises(psycopg.OperationalError, match="reject"):
        psycopg.connect(f"host=127.0.0.1 port={pg_port} user=mammo dbname=postgres "
                        f"password={SECRETS['database password']} sslmode=disable")
    stranger = make_tls_files(cwd / "other-ca", ca_name="some other CA").ca
    wrong_ca = {**env, "MAMMO_BROKER_URL": broker_url.replace(str(ca), str(stranger))}
    (cwd / "empty").mkdir()
    refused = run_mammo(["submit", str(cwd / "empty"), "--json"], wrong_ca, cwd)
    assert refused.returncode == 8, refused.stdout + refused.stderr  # broker unreachable
    assert "certificate verify failed" in refused.stderr
    assert SECRETS["broker password"] not in refused.stdout + refused.stderr
