"""`mammo rescore` after a rollback, or to a version sharing the weights of the one that
scored: the re-scored prediction becomes the current one everywhere (results, exam result,
worklist), on SQLite and PostgreSQL, through `mammo models activate` and the embedded
worker."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from models.registry import resolve_model, sealed
from producer.cli.exit_codes import ExitCode
from shared.db.schema import ExamResult, ModelVersion, Prediction
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.tiny_model import build_tiny_model

KEY = "rollback-test-key-0123456789abcdef"
OTHER_HEAD = {"abnormal": {"own": 0.1, "partner": 3.0, "bias": 1.0},
              "malignant": {"own": 2.0, "partner": 1.5, "bias": 0.5}}


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("second"), seed=8, version="0.0.2")


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return (f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite"
            else str(request.getfixturevalue("postgres_url")))


def _mammo(url: str, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> Callable[..., str]:
    """`mammo ARGS` on ``url``, asserted to succeed; its output."""
    def mammo(*args: str) -> str:
        code, out = invoke_cli(list(args), monkeypatch, tmp_path, database_url=url,
                               patient_id_key=KEY, report_dir=str(tmp_path / "reports"))
        assert code == ExitCode.OK, out
        return out

    return mammo


def _state(url: str) -> tuple[dict[int, tuple[str, float]], list[tuple[int, float | None,
                                                                        dict[str, Any]]]]:
    """{image: (version, p_malignant) of its newest prediction by id}, and the exam
    results (version, p_malignant, per_breast) in version order."""
    engine = create_engine(url)
    with engine.connect() as conn:
        newest: dict[int, tuple[str, float]] = {}
        for image_id, version, p in conn.execute(
                select(Prediction.image_id, ModelVersion.version, Prediction.p_malignant)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .order_by(Prediction.id)):
            newest[int(image_id)] = (str(version), float(p))
        exams = [(int(v), p, dict(b)) for v, p, b in conn.execute(
            select(ExamResult.version, ExamResult.p_malignant, ExamResult.per_breast)
            .order_by(ExamResult.version))]
    engine.dispose()
    return newest, exams


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rolling_back_a_model_brings_its_results_back(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path,
        second_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _url(backend, request, tmp_path)
    make_exam_set(tmp_path / "in", n_exams=1, seed=31)

    mammo = _mammo(url, monkeypatch, tmp_path)
    mammo("models", "activate", str(tiny_model_dir))
    mammo("run", str(tmp_path / "in"))
    first, exams = _state(url)
    assert {v for v, _ in first.values()} == {"0.0.1"} and len(exams) == 1
    mammo("models", "activate", str(second_model))
    assert "4 done image(s) not scored by tiny-test-model 0.0.2" in mammo(
        "rescore", "--batch", "1")
    mammo("models", "activate", "tiny-test-model:0.0.1")  # rolled back
    out = mammo("rescore", "--batch", "1")
    assert "4 done image(s) not scored by tiny-test-model 0.0.1" in out, out
    assert "processed 4 re-scored image(s)" in out, out
    newest, exams = _state(url)
    assert {i: v for i, (v, _) in newest.items()} == {i: "0.0.1" for i in first}
    # The same model scores the same again.
    assert [p for _, p in newest.values()] == pytest.approx([p for _, p in first.values()])
    assert [v for v, _, _ in exams] == [1, 2, 3]
    assert exams[2][1] == pytest.approx(exams[0][1])  # the exam read by 0.0.1 again
    results = json.loads(mammo("results", "--batch", "1", "--format", "json"))
    assert {r["model_version"] for r in results} == {"tiny-test-model:0.0.1"}
    worklist = json.loads(mammo("worklist", "--format", "json"))
    assert len(worklist) == 1
    assert worklist[0]["suspicion"] == max(r["suspicion"] for r in results)
    assert "0 done image(s) not scored by tiny-test-model 0.0.1" in mammo(
        "rescore", "--batch", "1")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_sharing_the_weights_reads_the_exams_with_its_own_head(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # default 1.2.0 -> 1.3.0: the same model.keras with a bilateral head.
    url = _url(backend, request, tmp_path)
    make_exam_set(tmp_path / "in", n_exams=1, seed=32)
    headed = tmp_path / "headed"
    shutil.copytree(tiny_model_dir, headed)
    meta = json.loads((headed / "metadata.json").read_text())
    meta.update(version="0.1.0", bilateral={**meta["bilateral"], "head": OTHER_HEAD})
    (headed / "metadata.json").write_text(json.dumps(sealed(meta)))
    assert resolve_model(str(headed)).sha256 == resolve_model(str(tiny_model_dir)).sha256

    mammo = _mammo(url, monkeypatch, tmp_path)
    mammo("models", "activate", str(tiny_model_dir))
    mammo("run", str(tmp_path / "in"))
    mammo("models", "activate", str(headed))
    out = mammo("rescore", "--batch", "1")
    assert "4 done image(s) not scored by tiny-test-model 0.1.0" in out, out
    newest, exams = _state(url)
    assert {v for v, _ in newest.values()} == {"0.1.0"}
    assert [v for v, _, _ in exams] == [1, 2]
    assert exams[1][2] != exams[0][2]  # each breast read against the other with 0.1.0's head
    results = json.loads(mammo("results", "--batch", "1", "--format", "json"))
    assert {r["model_version"] for r in results} == {"tiny-test-model:0.1.0"}
