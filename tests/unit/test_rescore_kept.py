"""A re-score that cannot read an image again keeps the image's earlier result.

Probe (rescore_damaged): run with model A, one scored file truncated, B activated,
`mammo rescore --batch 1`: the image turned failed/truncated, A's result vanished from the
results and the worklist, the exam turned incomplete, and rescore exited 0 saying
"1 failed". Only a file gone was kept (the `gone` list). Probe (rescore_replaced): files
replaced at their paths kept their result, but the summary said "2 more finished by
another process meanwhile".
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from models.registry import resolve_model
from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, Prediction
from shared.enums import Priority
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.tiny_model import build_tiny_model
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

KEY = "rescore-kept-key-0123456789abcdef"


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("second"), seed=8, version="0.0.2")


def _images(url: str) -> list[tuple[int, str, str | None]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Image.id, Image.state, Image.error_code)
                                .order_by(Image.id)).all()
    finally:
        engine.dispose()
    return [(int(i), str(s), e) for i, s, e in rows]


def _scored_and_rescored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: Path,
                         second: Path, damage: str, caplog: pytest.LogCaptureFixture,
                         ) -> tuple[int, str, str]:
    """Run with ``first``, damage files, re-score with ``second``: (exit, output, url)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=61)

    def mammo(args: list[str], model: Path) -> tuple[int, str]:
        return invoke_cli(args, monkeypatch, tmp_path, database_url=url, model=str(model),
                          patient_id_key=KEY, report_dir=str(tmp_path / "reports"))

    code, out = mammo(["run", str(tmp_path / "in")], first)
    assert code == ExitCode.OK, out
    lcc = next(f for f in files if f.name.endswith("_LCC.dcm"))
    if damage == "truncated":  # the file damaged after it was scored (a bad disk, a copy)
        lcc.write_bytes(lcc.read_bytes()[:2000])
    else:  # a drop folder whose names repeat: another patient's images at these paths
        others = make_exam_set(tmp_path / "other", n_exams=1, seed=62)
        shutil.copy(next(f for f in others if f.name.endswith("_LCC.dcm")), lcc)
        shutil.copy(next(f for f in others if f.name.endswith("_RCC.dcm")),
                    next(f for f in files if f.name.endswith("_LMLO.dcm")))
    with caplog.at_level(logging.WARNING, logger="worker.pipeline"):
        code, out = mammo(["rescore", "--batch", "1"], second)
    return code, out, url


def test_a_rescore_that_finds_a_file_truncated_keeps_its_earlier_result_and_exits_3(
        tmp_path: Path, tiny_model_dir: Path, second_model: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    code, out, url = _scored_and_rescored(tmp_path, monkeypatch, tiny_model_dir,
                                          second_model, "truncated", caplog)

    assert code == ExitCode.IMAGES_FAILED, out  # the job ran; one image was not re-scored
    assert ("processed 3 re-scored image(s) with the embedded worker; 1 could not be scored "
            "again and keeps its earlier result") in out, out
    assert "failed" not in out.split("4 done image(s)")[-1], out
    assert _images(url) == [(1, "done", None), (2, "done", None), (3, "done", None),
                            (4, "done", None)]
    [warning] = [r.getMessage() for r in caplog.records
                 if "could not be scored again" in r.getMessage()]
    assert ("1 image(s) could not be scored again and keep their earlier result (image "
            "id(s) 1): truncated; exam0000_LCC.dcm") in warning

    def mammo(args: list[str]) -> tuple[int, str]:
        return invoke_cli(args, monkeypatch, tmp_path, database_url=url,
                          model=str(second_model), patient_id_key=KEY)

    code, out = mammo(["results", "--batch", "1", "--format", "json"])
    assert code == ExitCode.OK, out
    rows = {r["image_id"]: r for r in json.loads(out)}
    assert rows[1]["state"] == "done" and rows[1]["suspicion"] is not None
    assert rows[1]["model_version"] == "tiny-test-model:0.0.1"  # model A's result stands
    assert {rows[i]["model_version"] for i in (2, 3, 4)} == {"tiny-test-model:0.0.2"}
    code, out = mammo(["worklist", "--format", "json"])
    assert code == ExitCode.OK, out
    [exam] = json.loads(out)
    assert exam["status"] == "complete" and exam["suspicion"] is not None, exam


def test_a_rescore_that_finds_files_replaced_says_so_not_that_another_process_did_them(
        tmp_path: Path, tiny_model_dir: Path, second_model: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    code, out, url = _scored_and_rescored(tmp_path, monkeypatch, tiny_model_dir,
                                          second_model, "replaced", caplog)

    assert code == ExitCode.IMAGES_FAILED, out
    assert ("processed 2 re-scored image(s) with the embedded worker; 2 could not be scored "
            "again and keep their earlier result") in out, out
    assert "another process" not in out, out
    assert [state for _, state, _ in _images(url)] == ["done"] * 4
    [warning] = [r.getMessage() for r in caplog.records
                 if "could not be scored again" in r.getMessage()]
    assert "(image id(s) 1, 2): missing_file; the first: exam0000_LCC.dcm was replaced" \
        in warning


def test_a_rescored_image_the_new_model_fails_on_keeps_its_earlier_result(
        settings: Settings, tmp_path: Path, second_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Not an input reason: the new model cannot score it (internal_error). The image was
    # read and scored by the earlier model; failing it took that result off the worklist.
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch,
                         make_exam_set(tmp_path / "in", n_exams=1, seed=63)).new_ids
    assert process_chunk(ids, token="first", runtime=WorkerRuntime(settings)).done == 4
    with sessions() as session:
        assert lifecycle.reopen(session, ids) == sorted(ids)  # what `mammo rescore` does
        session.commit()
    runtime = WorkerRuntime(settings, model_spec=resolve_model(str(second_model)))

    def fails(*_: object) -> object:
        raise RuntimeError("the new model chokes on this one")

    monkeypatch.setattr(runtime.classifier, "predict", fails)
    result = process_chunk(ids, token="rescore", runtime=runtime)

    assert (result.done, result.failed, result.kept) == (0, 0, 4)
    with sessions() as session:
        states = session.execute(select(Image.state, Image.error_code)).all()
        predictions = session.execute(select(func.count()).select_from(Prediction)).scalar()
    assert sorted(states) == [("done", None)] * 4 and predictions == 4
