"""What `mammo run` shows while it works: the files counted, the model's load said as such
(and skipped when nothing waits), a rate of images that leaves the load out, and a bar over
the closing exam PDFs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from producer.cli import commands_run
from producer.cli.commands_run import rate_text
from producer.cli.exit_codes import ExitCode
from producer.embedded_run import run_embedded
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.reports.batch_outputs import write_batch_documents
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from worker.classifier import Classifier


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _recording_load(monkeypatch: pytest.MonkeyPatch, events: list[str],
                    loaded_at: list[float] | None = None) -> None:
    real = Classifier.load

    def load(self: Classifier) -> None:
        real(self)
        events.append("model loaded")
        if loaded_at is not None:
            loaded_at.append(time.perf_counter())

    monkeypatch.setattr(Classifier, "load", load)


def _recording_bar(events: list[str],
                   real: Callable[[str], AbstractContextManager[Any]],
                   ) -> Callable[[str], AbstractContextManager[Any]]:
    @contextmanager
    def bar(label: str) -> Iterator[Any]:
        events.append(f"{label} shown")
        with real(label) as update:
            yield update

    return bar


def _bar_closing(events: list[str],
                 real: Callable[[str], AbstractContextManager[Any]],
                 ) -> Callable[[str], AbstractContextManager[Any]]:
    shown = _recording_bar(events, real)

    @contextmanager
    def bar(label: str) -> Iterator[Any]:
        with shown(label) as update:
            yield update
        events.append(f"{label} closed")

    return bar


def _run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path,
             events: list[str]) -> str:
    _recording_load(monkeypatch, events)
    monkeypatch.setattr(commands_run, "file_counter",
                        _bar_closing(events, commands_run.file_counter))
    monkeypatch.setattr(commands_run, "completion_bar",
                        _bar_closing(events, commands_run.completion_bar))
    code, out = invoke_cli(["run", str(tmp_path / "night")], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 'm.db'}",
                           model=str(tiny_model_dir), report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    return " ".join(out.split())


def test_no_counter_stands_still_while_the_model_loads(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # Opened during the load, they stood at "reading headers 0 files" and "classifying 0/?"
    # for the whole of it (202 s on a loaded host): the files are counted before it, the
    # images after it.
    make_exam_set(tmp_path / "night", n_exams=1, seed=2)
    events: list[str] = []
    out = _run_cli(monkeypatch, tmp_path, tiny_model_dir, events)
    # (load() is called again by the worker's thread, finding the model there.)
    loaded = events.index("model loaded")
    assert events.index("reading headers closed") < loaded < events.index("classifying shown")
    assert out.count("images/s after a model load of ") == 1


def test_a_re_run_with_nothing_new_does_not_load_the_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # Every file known and finished: the model's load (18 s for the shipped one) was spent
    # on nothing before the table of the earlier results.
    make_exam_set(tmp_path / "night", n_exams=1, seed=2)
    _run_cli(monkeypatch, tmp_path, tiny_model_dir, [])
    events: list[str] = []
    out = _run_cli(monkeypatch, tmp_path, tiny_model_dir, events)
    assert "0 new, 4 already submitted" in out, out
    assert "model loaded" not in events
    assert "nothing to classify (the model was not loaded)" in out
    assert out.count(" done ") >= 4  # the earlier results, listed


def test_the_run_s_seconds_leave_the_model_s_load_out(
        monkeypatch: pytest.MonkeyPatch, settings: Settings, sessions: sessionmaker[Session],
        tmp_path: Path) -> None:
    # The images/s printed beside "(model load 202.5 s)" divided by the load as well:
    # 300 images read as 0.3 images/s.
    make_exam_set(tmp_path / "in", n_exams=1, seed=3)
    started = time.perf_counter()
    outcome = run_embedded(settings, sessions, [tmp_path / "in"], name="rate")
    ended = time.perf_counter()
    assert outcome.model_load_seconds > 0
    assert outcome.seconds <= ended - started - outcome.model_load_seconds
    assert outcome.images_per_s == pytest.approx(4 / outcome.seconds)


def test_the_exam_pdfs_are_counted_as_they_are_written(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=2, seed=4)
    run_embedded(settings, sessions, [tmp_path / "in"], name="pdfs")
    seen: list[tuple[int, int]] = []
    with sessions() as session:
        documents = write_batch_documents(session, 1, settings,
                                          progress=lambda done, total: seen.append((done, total)))
    assert len(documents.exams) == 2
    assert seen == [(0, 2), (1, 2), (2, 2)]


def test_mammo_run_shows_its_exam_pdfs_being_written(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The closing phase ran minutes with nothing on the terminal but the batch line.
    make_exam_set(tmp_path / "night", n_exams=2, seed=5)
    code, out = invoke_cli(["run", str(tmp_path / "night"), "--format", "json"],
                           monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 'm.db'}",
                           model=str(tiny_model_dir), report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    bar = next(line for line in out.splitlines() if line.startswith("writing exam PDFs"))
    assert "2/2" in bar
    assert out.index("writing exam PDFs") < out.index("reports: ")


def test_a_slow_rate_keeps_its_leading_digits() -> None:
    assert [rate_text(r) for r in (0.0413, 0.5, 3.14159, 0.0)] == ["0.041", "0.5", "3.1", "0"]
