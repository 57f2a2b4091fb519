"""A real `mammo worker` on PostgreSQL whose database is restored from a backup under it.

Probe (model_row_restored): the worker kept the model row id it registered at start. The
backup, taken after `mammo submit` and before the worker started, had no such row:
restored, every chunk failed (`raised unexpected: IntegrityError ...
fk_predictions_model_version_id_model_versions`), the sweeper re-sent the images, and
healthy images ended `failed` `poison` ("the worker most likely crashed on it"). With
`mammo models activate default` after the restore, default 1.8.0 took id 1, the id the
worker had cached: the tiny model's scores were stored as default 1.8.0's. The worker now
registers its model again and scores under its own row; no image is charged for it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from models.activation import activate
from models.registry import resolve_model
from shared.db.schema import ModelVersion, Prediction
from shared.synthetic import make_exam_set
from tests.helpers.db import image_outcomes, tally
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration

# Quick sweeps, so an abandoned claim comes back (and, before the fix, reached `poison`)
# within a minute; queued images are re-sent only by the `mammo recover` below.
FAST = {"sweep_interval_s": "2", "requeue_after_s": "600", "claim_heartbeat_s": "2"}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _scored_by(url: str) -> list[tuple[str, str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted((str(n), str(v), str(h)) for n, v, h in conn.execute(
                select(ModelVersion.name, ModelVersion.version, ModelVersion.sha256)
                .join(Prediction, Prediction.model_version_id == ModelVersion.id)).all())
    finally:
        engine.dispose()


def _activate_default(url: str) -> int:
    """`mammo models activate default`'s row (the command also loads the model: slow)."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            row_id = activate(session, resolve_model("default"))
            session.commit()
    finally:
        engine.dispose()
    return row_id


@pytest.mark.parametrize("restored", ["row_gone", "id_reused"])
def test_a_worker_scores_under_its_own_model_row_after_the_database_is_restored(
        restored: str, tmp_path: Path, redis_url: str, postgres_url: str,
        tiny_model_dir: Path) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump and pg_restore (PostgreSQL's client tools) are needed")
    make_exam_set(tmp_path / "in", n_exams=1, seed=62)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url,
                    model=str(tiny_model_dir), chunk_size="2", max_attempts="2", **FAST)
    done = run_mammo(["submit", str(tmp_path / "in"), "--json"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    backup = tmp_path / "mammo.dump"  # before any worker registered its model
    subprocess.run(["pg_dump", "-Fc", "-f", str(backup), _libpq(postgres_url)], check=True)

    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        wait_for(lambda: tally(postgres_url).done == 4, timeout=180,
                 what="the first pass", on_timeout=worker.log)
        subprocess.run(["pg_restore", "--clean", "--if-exists", "--single-transaction",
                        "-d", _libpq(postgres_url), str(backup)], check=True)
        assert image_outcomes(postgres_url) == [("queued", None, 0)] * 4
        if restored == "id_reused":
            assert _activate_default(postgres_url) == 1  # the id the worker had cached
        resend = run_mammo(["recover", "--older-than", "0"], env, tmp_path)
        assert resend.returncode == 0, resend.stdout + resend.stderr
        wait_for(lambda: tally(postgres_url).terminal == 4, timeout=180,
                 what="the 4 re-sent images finished", on_timeout=worker.log)
        assert worker.proc.poll() is None, worker.log()
    finally:
        worker.stop()
    log = worker.log()
    tiny = resolve_model(str(tiny_model_dir))
    assert image_outcomes(postgres_url) == [("done", None, 1)] * 4, log
    assert _scored_by(postgres_url) == [(tiny.name, tiny.version, tiny.sha256)] * 4, log
    assert "raised unexpected" not in log
    assert log.count("its row in the database changed under this worker (id 1 is gone or "
                     "another model's; database restored from a backup?)") == 1, log
