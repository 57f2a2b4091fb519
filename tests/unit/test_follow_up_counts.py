"""The follow-up tells exam results it wrote because a save's refresh was owed from those of
incomplete exams whose missing views timed out.

After a PostgreSQL restart every worker logged "4 timed-out exam(s) given their result"
(and `mammo recover` printed it) although all four were complete four-view exams whose
refresh had merely been skipped during the restart (``exams.owe_exam_refresh``): a reader
went looking for missing views that had all arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.schema import ExamResult
from shared.enums import Priority
from shared.exams import studies_awaiting_result
from shared.notify import Notifier
from shared.recovery import BackgroundFollowUp, follow_up
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.db import schema_sessions
from worker import pipeline
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

OWED = "2 exam result(s) refreshed (owed after a save whose refresh was skipped or cut off)"
TIMED_OUT = "1 timed-out exam(s) given their result"


@pytest.fixture
def waiting(settings: Settings) -> Settings:
    """A missing view is waited for an hour: no exam here times out while it is saved."""
    return settings.model_copy(update={"exam_timeout_s": 3600.0, "decode_processes": 0})


@pytest.fixture
def sessions(waiting: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(waiting)


def _database_restarting(session: Session, image_ids: object) -> set[int]:
    raise OperationalError("SELECT studies", {}, Exception(
        "terminating connection due to administrator command"))


def _after_a_database_restart(settings: Settings, sessions: sessionmaker[Session],
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Two complete four-view exams saved while the database restarted under their refresh
    (owed), and one of three views whose fourth never came (saved, not due for an hour);
    none has a result yet. Their study ids."""
    files = make_exam_set(tmp_path / "in", n_exams=3, seed=51)
    batch = create_batch(sessions, name="night", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, files[:8] + files[8:11]).new_ids
    runtime = WorkerRuntime(settings)
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "studies_of_images", _database_restarting)
        for n, chunk in enumerate((ids[:4], ids[4:8])):  # the settings' chunk size
            assert process_chunk(chunk, token=f"during-{n}", runtime=runtime).done == 4
    assert process_chunk(ids[8:], token="after", runtime=runtime).done == 3
    runtime.close()
    with sessions() as session:
        assert session.scalars(select(ExamResult)).all() == []
        studies = studies_awaiting_result(session)
    assert len(studies) == 3
    return studies


def _results(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(r.status, r.reason) for r in session.scalars(
            select(ExamResult).order_by(ExamResult.study_id))]


def test_the_follow_up_counts_owed_refreshes_apart_from_timed_out_exams(
        waiting: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _after_a_database_restart(waiting, sessions, tmp_path, monkeypatch)
    due = waiting.model_copy(update={"exam_timeout_s": 0.001})  # the hour has passed
    notifier = Notifier(due, sessions)
    log = logging.getLogger("mammo.test.follow_up")

    with caplog.at_level(logging.WARNING, logger=log.name):
        BackgroundFollowUp(due, notifier, log).run()  # a worker's sweeper, in its thread

    assert _results(sessions) == [("complete", "four_views"), ("complete", "four_views"),
                                  ("incomplete", "timeout")]
    [line] = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert line.startswith(f"follow-up: {OWED}; {TIMED_OUT}; "), line
    assert not follow_up(sessions, due, notifier)  # settled: nothing owed any more


def test_the_follow_up_of_only_owed_refreshes_names_no_timed_out_exam(
        waiting: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the hour: the incomplete exam is still waited for."""
    _after_a_database_restart(waiting, sessions, tmp_path, monkeypatch)

    followed = follow_up(sessions, waiting, Notifier(waiting, sessions))

    assert (followed.exams, followed.refreshed, followed.timed_out) == (2, 2, 0)
    assert followed.summary().startswith(f"{OWED}; 0 timed-out exam(s) given their result;")
    assert _results(sessions) == [("complete", "four_views")] * 2


def test_mammo_recover_counts_owed_refreshes_apart_from_timed_out_exams(
        waiting: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _after_a_database_restart(waiting, sessions, tmp_path, monkeypatch)

    code, output = invoke_cli(["recover"], monkeypatch, tmp_path,
                              database_url=waiting.database_url, model=str(waiting.model),
                              exam_timeout_s="0.001")

    assert code == ExitCode.OK, output
    assert f"{OWED}; {TIMED_OUT};" in output
    assert len(_results(sessions)) == 3
