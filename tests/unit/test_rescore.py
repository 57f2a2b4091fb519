"""`mammo rescore`: done images scored again by the model now in use, beside (not instead
of) their earlier predictions; through the embedded worker, and onto a real Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select, update

from models.registry import resolve_model, sealed
from producer.cli.exit_codes import ExitCode
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction, Study
from shared.queue import QUEUE_NAME
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.tiny_model import build_tiny_model

KEY = "rescore-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Another version: other weights under the first model's name and version are refused.
    return build_tiny_model(tmp_path_factory.mktemp("second"), seed=8, version="0.0.2")


def _scored(url: str) -> list[tuple[int, str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(Prediction.image_id, ModelVersion.version)
                            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                            .order_by(Prediction.image_id, Prediction.id)).all()
    engine.dispose()
    return [(int(i), str(v)) for i, v in rows]


def test_rescore_adds_the_new_models_prediction_and_recomputes_the_exam(
        tmp_path: Path, tiny_model_dir: Path, second_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_exam_set(tmp_path / "in", n_exams=1, seed=13)

    def mammo(args: list[str], model: Path) -> tuple[int, str]:
        return invoke_cli(args, monkeypatch, tmp_path, database_url=url, model=str(model),
                          patient_id_key=KEY, report_dir=str(tmp_path / "reports"))

    code, out = mammo(["run", str(tmp_path / "in")], tiny_model_dir)
    assert code == ExitCode.OK, out
    first = _scored(url)
    assert len(first) == 4
    code, out = mammo(["rescore"], second_model)
    assert code == ExitCode.USAGE and "name what to re-score" in out
    # The second model's weights as tiny-test-model 0.0.1, the first model's name and
    # version: its predictions could not be told from the first model's.
    namesake = tmp_path / "namesake"
    shutil.copytree(second_model, namesake)
    meta = json.loads((namesake / "metadata.json").read_text())
    (namesake / "metadata.json").write_text(json.dumps(sealed({**meta, "version": "0.0.1"})))
    code, out = mammo(["rescore", "--batch", "1", "--dry-run"], namesake)
    assert code == ExitCode.NO_MODEL and "--version NEW" in out, out
    code, out = mammo(["rescore", "--batch", "1", "--dry-run"], second_model)
    second = resolve_model(str(second_model))
    assert code == ExitCode.OK, out
    assert (f"4 done image(s) not scored by {second.name} {second.version} "
            "(dry run)") in out, out
    assert _scored(url) == first

    code, out = mammo(["rescore", "--batch", "1"], second_model)
    assert code == ExitCode.OK and "processed 4 re-scored image(s)" in out, out
    both = _scored(url)
    assert len(both) == 8 and set(first) <= set(both)  # the old predictions are kept
    code, out = mammo(["results", "--batch", "1", "--format", "json"], second_model)
    newest = {r["model_version"] for r in json.loads(out)}
    assert len(newest) == 1 and newest != {first[0][1]}
    engine = create_engine(url)
    with engine.connect() as conn:
        versions = conn.execute(select(ExamResult.version, ExamResult.superseded_at)
                                .order_by(ExamResult.version)).all()
        states = conn.execute(select(Image.state, func.count()).group_by(Image.state)).all()
    engine.dispose()
    assert [v for v, _ in versions] == [1, 2] and versions[0][1] is not None
    assert states == [("done", 4)]
    code, out = mammo(["rescore", "--batch", "1"], second_model)  # nothing left to do
    assert code == ExitCode.OK and "0 done image(s)" in out and len(_scored(url)) == 8
    assert "dry run" not in out


def test_rescore_sends_the_images_to_the_workers_through_redis(
        tmp_path: Path, tiny_model_dir: Path, second_model: Path, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_exam_set(tmp_path / "in", n_exams=1, seed=14)
    code, out = invoke_cli(["run", str(tmp_path / "in")], monkeypatch, tmp_path,
                           database_url=url, model=str(tiny_model_dir), patient_id_key=KEY,
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    code, out = invoke_cli(["rescore", "--study", "1.2.3.no.such.study"],
                           monkeypatch, tmp_path, database_url=url, model=str(second_model),
                           broker_url=redis_url, patient_id_key=KEY, chunk_size="2")
    assert code == ExitCode.USAGE, out  # no such study: named, nothing sent
    assert "no exam with StudyInstanceUID 1.2.3.no.such.study" in out
    engine = create_engine(url)
    with engine.connect() as conn:
        uid = conn.execute(select(Study.study_uid)).scalar_one()
    code, out = invoke_cli(["rescore", "--study", uid], monkeypatch, tmp_path,
                           database_url=url, model=str(second_model), broker_url=redis_url,
                           patient_id_key=KEY, chunk_size="2")
    assert code == ExitCode.OK and "re-queued 4 image(s) in 2 message(s)" in out, out
    # The embedded worker that scored them a moment ago ran the first model.
    assert "warning: workers seen in the last 10 minutes scored with another model" in out
    with engine.connect() as conn:
        assert conn.execute(select(Image.state).distinct()).scalars().all() == ["queued"]
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    assert sum(client.llen(k) for k in client.keys(f"{QUEUE_NAME}*")) == 2


def test_rescore_reads_a_moved_file_and_keeps_the_result_of_one_that_is_gone(
        tmp_path: Path, tiny_model_dir: Path, second_model: Path,
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """After `mammo watch --after move` the files live in processed/; once deleted, the
    images must keep their earlier result, not turn `failed` (the worklist lost the exam)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_exam_set(tmp_path / "in", n_exams=1, seed=15)

    def mammo(args: list[str], model: Path) -> tuple[int, str]:
        return invoke_cli(args, monkeypatch, tmp_path, database_url=url, model=str(model),
                          patient_id_key=KEY, report_dir=str(tmp_path / "reports"))

    assert mammo(["run", str(tmp_path / "in")], tiny_model_dir)[0] == ExitCode.OK
    engine = create_engine(url)
    processed = tmp_path / "in" / "processed"
    processed.mkdir()
    with engine.begin() as conn:  # what the watcher's move does
        for image_id, source in conn.execute(select(Image.id, Image.source)).all():
            moved = processed / Path(source).name
            Path(source).rename(moved)
            conn.execute(update(Image).where(Image.id == image_id)
                         .values(archived_path=str(moved)))
    code, out = mammo(["rescore", "--batch", "1"], second_model)
    assert code == ExitCode.OK and "processed 4 re-scored image(s)" in out, out
    assert len(_scored(url)) == 8

    for moved in processed.iterdir():
        moved.unlink()
    third = build_tiny_model(tmp_path_factory.mktemp("third"), seed=9, version="0.0.3")
    code, out = mammo(["rescore", "--batch", "1"], third)
    assert code == ExitCode.IMAGES_FAILED, out
    assert "4 could not be scored again and keep their earlier result" in out, out
    with engine.connect() as conn:
        states = conn.execute(select(Image.state).distinct()).scalars().all()
    engine.dispose()
    assert states == ["done"] and len(_scored(url)) == 8  # the second model's result stands
    code, out = mammo(["worklist", "--format", "json"], third)
    assert json.loads(out)[0]["suspicion"] is not None
