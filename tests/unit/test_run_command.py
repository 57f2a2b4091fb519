"""`mammo run` as a person runs it: again after a failure, after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.cli import invoke_cli
from tests.helpers.processes import mammo_env
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


def _env(tmp_path: Path, model: Path) -> dict[str, str]:
    return {"database_url": f"sqlite:///{tmp_path / 'm.db'}", "model": str(model),
            "report_dir": str(tmp_path / "reports"), "chunk_size": "4"}


def test_a_second_run_of_a_folder_with_a_failed_file_still_exits_3(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The second run's table lists the broken file as failed (a copy of the first run's
    # image): a script must learn it from the exit code too.
    files = make_exam_set(tmp_path / "night", n_exams=1, seed=3)
    write_truncated_copy(files[0], tmp_path / "night" / "broken.dcm")
    env = _env(tmp_path, tiny_model_dir)
    for _ in range(2):
        code, out = invoke_cli(["run", str(tmp_path / "night"), "--format", "json"],
                               monkeypatch, tmp_path, **env)
        assert code == ExitCode.IMAGES_FAILED, out
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    assert [r["state"] for r in rows if r["source"].endswith("broken.dcm")] == ["failed"]


def _interrupted_run(tmp_path: Path, model: Path, folder: Path) -> list[int]:
    """What `mammo run FOLDER` stopped after its first chunk leaves: a batch whose first
    four images are done and the rest queued. Returns the image ids."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", broker_url=None,
                        model=str(model), chunk_size=4, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="night", priority=Priority.ROUTINE, mode="embedded")
    ids = register_files(sessions, batch, sorted(folder.iterdir())).new_ids
    with sessions() as session:  # its messages were sent, into the run's memory
        lifecycle.mark_enqueued(session, ids)
        session.commit()
    process_chunk(ids[:4], token="the-interrupted-run", runtime=WorkerRuntime(settings))
    engine.dispose()
    return ids


def _resumed_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                 tiny_model_dir: Path) -> str:
    """`mammo run` of a 2-exam folder whose first run was interrupted after 4 images: what
    it printed, on one line (it must succeed)."""
    make_exam_set(tmp_path / "night", n_exams=2, seed=4)
    _interrupted_run(tmp_path, tiny_model_dir, tmp_path / "night")
    code, out = invoke_cli(["run", str(tmp_path / "night")], monkeypatch, tmp_path,
                           **_env(tmp_path, tiny_model_dir))
    assert code == ExitCode.OK, out
    return " ".join(out.split())


def test_a_resumed_run_counts_each_file_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    said = _resumed_run(monkeypatch, tmp_path, tiny_model_dir)
    assert ("batch 2: 8 file(s): 0 new, 8 already submitted (4 of them unfinished, finished "
            "in this run), 0 rejected at intake") in said


# `mammo run` whose first finished chunk is followed by a SIGTERM to the whole process, as a
# scheduler's stop sends it: deterministic, where a timed `kill` races the tiny model.
_TERM_AFTER_FIRST_CHUNK = """
import os, signal, sys
import worker.tasks
real = worker.tasks.process_chunk
def then_term(*args, **kwargs):
    done = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return done
worker.tasks.process_chunk = then_term
from producer.cli.main import main
sys.argv = ["mammo", "run", sys.argv[1]]
main()
"""


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path: Path, tiny_model_dir: Path) -> None:
    make_exam_set(tmp_path / "night", n_exams=3, seed=5)
    env = mammo_env(**_env(tmp_path, tiny_model_dir))
    done = subprocess.run([sys.executable, "-c", _TERM_AFTER_FIRST_CHUNK,
                           str(tmp_path / "night")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "interrupted: queued work is kept in the database" in done.stderr
    assert "leaked semaphore" not in done.stderr  # the decoders' helpers were closed
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        states = Counter(conn.execute(select(Image.state)).scalars())
    engine.dispose()
    # The chunk in hand was finished, not left claimed for a lease to run out.
    assert states["processing"] == 0 and states["done"] >= 4, states


def test_recover_without_a_broker_finishes_what_an_interrupted_run_left(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The interrupt message offers `mammo recover`: its queued images have no message
    # anywhere (the run's queue was in its memory), so waiting 30 minutes helps nothing.
    make_exam_set(tmp_path / "night", n_exams=2, seed=7)
    _interrupted_run(tmp_path, tiny_model_dir, tmp_path / "night")
    code, out = invoke_cli(["recover"], monkeypatch, tmp_path, **_env(tmp_path, tiny_model_dir))
    assert code == ExitCode.OK, out
    assert "4 image(s) to recover" in out
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        assert set(conn.execute(select(Image.state)).scalars()) == {"done"}
    engine.dispose()


def test_the_run_resumed_after_an_interruption_writes_the_nights_reports(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # "Run the same command again" must end with the night's report: the interrupted
    # batch's summary and exports (it holds the images), and a PDF per exam.
    said = _resumed_run(monkeypatch, tmp_path, tiny_model_dir)
    reports = tmp_path / "reports"
    first = json.loads((reports / "batch-1.json").read_text())
    assert [r["state"] for r in first["results"]] == ["done"] * 8
    assert (reports / "batch-1-summary.html").is_file()
    assert "batch 1 (these files' first run) is finished; its reports:" in said
    assert len(list((reports / "exams").glob("exam-*.pdf"))) == 2
    _, out = invoke_cli(["worklist", "--format", "json"], monkeypatch, tmp_path,
                           **_env(tmp_path, tiny_model_dir))
    assert [row["report_path"] is not None for row in json.loads(out)] == [True, True]


def test_a_rerun_completes_reports_an_interruption_cut_off_and_keeps_the_rest(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    make_exam_set(tmp_path / "night", n_exams=2, seed=4)
    env = _env(tmp_path, tiny_model_dir)
    code, out = invoke_cli(["run", str(tmp_path / "night")], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    reports = tmp_path / "reports"
    kept, cut = sorted((reports / "exams").glob("exam-*.pdf"))
    cut.unlink()  # interrupted while writing the reports: one PDF and the summary missing
    (reports / "batch-1-summary.html").unlink()
    written = kept.stat().st_mtime_ns
    code, out = invoke_cli(["run", str(tmp_path / "night")], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    assert cut.is_file() and (reports / "batch-1-summary.html").is_file()
    assert kept.stat().st_mtime_ns == written  # current already: not decoded and drawn again
