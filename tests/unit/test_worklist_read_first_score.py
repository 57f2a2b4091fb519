"""The worklist prints the score it ranks by: an exam whose breast's own views found what the
other breast's reading lowered is listed among the 9s and 10s with that score, in every
format and in the alert, not with its lower exam score (a tool picking suspicion >= 8 from
the list skipped it)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, ModelVersion
from shared.exams import refresh_exam_results
from shared.notify.content import exam_alert_notice
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_html import render_summary_html
from tests.helpers.cli import run_cli
from tests.unit.test_exam_own_view_scores import HEAD_1_8_0, MALIGNANT, NINE, NORMAL, _exam

BOTH, NINE_ALONE, CLEAR = "1.2.9.2", "1.2.9.1", "1.2.9.4"


@contextmanager
def _sessions(url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def database(sqlite_url: str) -> str:
    """A cancer in each breast (each read against the other: under 9), a one-sided 9 and a
    clear exam, in batch 1."""
    with _sessions(sqlite_url) as sessions, sessions() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[1, 1], path="/m", bilateral=HEAD_1_8_0)])
        session.flush()
        _exam(session, 1, {"L": NINE})
        _exam(session, 2, {"L": MALIGNANT, "R": MALIGNANT})
        _exam(session, 4, {"L": NORMAL, "R": NORMAL})
        refresh_exam_results(session, [1, 2, 4], timeout_s=0)
        session.commit()
    return sqlite_url


def _mammo(args: list[str], url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    result = run_cli(args, monkeypatch, tmp_path, database_url=url)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_worklist_json_and_csv_print_the_score_they_rank_by(
        database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = json.loads(_mammo(["worklist", "--format", "json"], database, monkeypatch, tmp_path))
    assert [r["study_uid"] for r in rows] == [BOTH, NINE_ALONE, CLEAR]
    scores = [r["suspicion"] for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[:2] == [10, 9]
    both = rows[0]
    # The exam's validated score and the lowered breasts' stay, under their own keys.
    assert both["exam_suspicion"] < 9
    assert {b["suspicion"] for b in both["per_breast"].values()} == {both["exam_suspicion"]}
    assert {b["own_suspicion"] for b in both["per_breast"].values()} == {10}
    assert rows[1]["exam_suspicion"] == rows[1]["suspicion"] == 9

    listed = list(csv.DictReader(io.StringIO(
        _mammo(["worklist", "--format", "csv"], database, monkeypatch, tmp_path))))
    assert [(r["study_uid"], r["suspicion"], r["exam_suspicion"]) for r in listed][:2] == [
        (BOTH, "10", str(both["exam_suspicion"])), (NINE_ALONE, "9", "9")]

    table = _mammo(["worklist"], database, monkeypatch, tmp_path).splitlines()
    header = [c.strip() for c in next(ln for ln in table if "study_uid" in ln).split("┃")]
    first = [c.strip() for c in next(ln for ln in table if BOTH in ln).split("│")]
    assert first[header.index("suspicion")] == "10"
    assert first[header.index("exam_suspicion")] == str(both["exam_suspicion"])


def test_the_batch_summary_s_read_first_table_shows_the_ranking_score(
        database: str, tmp_path: Path) -> None:
    with _sessions(database) as sessions, sessions() as session:
        page = render_summary_html(collect_batch_summary(session, 1, report_dir=tmp_path))
    read_first = page[page.index("Read first"):]
    cells = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td>", read_first)
    assert [(rank, uid, score) for rank, uid, score in cells][:2] == [
        ("1", BOTH, "10"), ("2", NINE_ALONE, "9")]


def test_the_alert_names_the_worklist_s_score(database: str) -> None:
    with _sessions(database) as sessions, sessions() as session:
        notice = exam_alert_notice(session, 2, threshold=8)
    assert notice is not None
    assert notice.payload["suspicion"] == 10 and notice.payload["exam_suspicion"] < 9
    assert "Suspicion 10/10 exam to read first" in notice.subject
    assert notice.text.startswith(
        "An exam was scored at suspicion 10 of 10 by a breast's own views "
        f"({notice.payload['exam_suspicion']} with the other breast's, which lowered it: "
        "read both)")

