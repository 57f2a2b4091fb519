"""The real path: `mammo submit` -> Redis -> `mammo worker` subprocess -> SQL.

No mocks: a real Redis, a real PostgreSQL (or SQLite file), real worker processes with the
prefork pool, and assertions on what the database holds afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from producer.cli.exit_codes import ExitCode
from shared.db.schema import ExamResult, Image, Prediction
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration

CHUNK = 10


@pytest.fixture
def fifty_images(tmp_path: Path) -> tuple[Path, int]:
    """48 synthetic DICOMs + 1 with truncated pixel data + 1 PNG = 50 files."""
    folder = tmp_path / "incoming"
    files = make_exam_set(folder, n_exams=12, seed=11)
    write_truncated_copy(files[5], folder / "cut-short.dcm")
    make_exam_set(folder / "png", n_exams=1, seed=12, fmt="png")
    for extra in sorted((folder / "png").iterdir())[1:]:
        extra.unlink()
    return folder, 50


def _terminal(url: str, batch_id: int) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(Image).where(
            Image.batch_id == batch_id, Image.state.in_(["done", "failed"]))).scalar_one()
    engine.dispose()
    return int(n)


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_url")
    else:
        yield f"sqlite:///{tmp_path / 'mammo.db'}"


def test_fifty_images_through_redis_and_a_worker_process(
    fifty_images: tuple[Path, int], redis_url: str, database_url: str, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    folder, n_files = fifty_images
    env = mammo_env(broker_url=redis_url, database_url=database_url, model=str(tiny_model_dir),
                    chunk_size=str(CHUNK))
    submitted = run_mammo(["submit", str(folder), "--name", "it", "--json"], env, tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    summary = json.loads(submitted.stdout)
    assert summary["files"] == n_files and summary["queued"] == n_files
    assert summary["messages"] == n_files // CHUNK
    batch = summary["batch_id"]

    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        wait_for(lambda: _terminal(database_url, batch) == n_files, timeout=180,
                 what="all images processed", on_timeout=worker.log)
        status = run_mammo(["status", str(batch), "--format", "json"], env, tmp_path)
        assert status.returncode == 0, status.stderr
        [row] = json.loads(status.stdout)
        assert (row["done"], row["failed"], row["queued"]) == (n_files - 1, 1, 0)
        assert row["finished_at"] is not None

        # Submitting the same folder again creates no new work; the copy of the failed
        # image still says so in the exit code, as `mammo run` does.
        again = run_mammo(["submit", str(folder), "--json"], env, tmp_path)
        assert again.returncode == ExitCode.IMAGES_FAILED, again.stderr
        assert json.loads(again.stdout)["duplicates"] == n_files
        assert json.loads(again.stdout)["duplicates_failed"] == 1
        assert json.loads(again.stdout)["queued"] == 0
    finally:
        worker.stop()

    engine = create_engine(database_url)
    with engine.connect() as conn:
        per_image = conn.execute(select(Prediction.image_id, func.count())
                                 .group_by(Prediction.image_id)).all()
        passes = conn.execute(text(
            "SELECT forward_pass_id, COUNT(*), MAX(forward_pass_size) FROM predictions "
            "GROUP BY forward_pass_id")).all()
        failed = conn.execute(select(Image.source, Image.error_code, Image.error_message)
                              .where(Image.state == "failed")).all()
        exams = conn.execute(select(ExamResult.status, ExamResult.per_breast)
                             .where(ExamResult.superseded_at.is_(None))).all()
    engine.dispose()
    assert len(per_image) == n_files - 1 and all(n == 1 for _, n in per_image)
    # One forward pass per chunk: 5 chunks of 10, one of which lost its truncated image.
    assert sorted(n for _, n, _ in passes) == [9, 10, 10, 10, 10]
    assert all(n == size for _, n, size in passes)
    [(source, code, message)] = failed
    assert source.endswith("cut-short.dcm") and code == "truncated"
    assert "(7FE0,0010)" in message
    # The worker registered the model's bilateral head: complete exams read each breast
    # against the other.
    complete = [breasts for status, breasts in exams if status == "complete"]
    assert len(complete) == 12
    assert all(b["L"]["bilateral"] and b["R"]["bilateral"] for b in complete)

    results = run_mammo(["results", "--batch", str(batch), "--format", "json"], env, tmp_path)
    assert results.returncode == 0, results.stderr
    rows = json.loads(results.stdout)
    assert len(rows) == n_files
    done = [r for r in rows if r["state"] == "done"]
    assert all(r["model_version"] == "tiny-test-model:0.0.1" for r in done)
    assert all(abs(r["p_normal"] + r["p_benign"] + r["p_malignant"] - 1) < 1e-6 for r in done)
    assert all(1 <= r["suspicion"] <= 10 for r in done)
    dicoms = [r for r in done if r["source"].endswith(".dcm")]
    assert all(r["study_uid"] and r["sop_instance_uid"] and r["laterality"] in ("L", "R")
               for r in dicoms)
