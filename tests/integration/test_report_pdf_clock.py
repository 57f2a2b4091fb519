"""Whether an exam's (or an image's) PDF predates its result is judged across the two clocks.

The result is stamped on the database server's clock and the PDF's time on this host's file
system. Compared as they were, on a host 20 minutes ahead of the server a PDF written 5
minutes before a later result (an exam completed by its timeout after `mammo run` wrote
it) read as current: the worklist did not flag it and the next run did not write it again,
so a reader opened a PDF without the final result. On a host behind, every PDF written
after its result read as older: every read-first row was flagged and every PDF rewritten at
each run. Here the host's clock (``Clocks.read``) is set 20 minutes off a real PostgreSQL
server's, and each PDF's modification time is the one this host's file system would stamp.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import clock
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import ExamResult, Prediction
from shared.reports import exam_reports
from shared.reports.worklist import WorklistFilter, exam_pdf_path, image_pdf_path, worklist_rows
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by
from tests.unit.test_worklist_read_alone import _seed

SKEW = timedelta(minutes=20)
EXAM = "1.2.9.1"  # the seeded exam (``_seed``)
STALE = ("the exam PDF predates this result", "the image PDF predates this result")


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=postgres_url, broker_url=None,  # type: ignore[call-arg]
                    report_dir=tmp_path / "reports", _env_file=None)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _results(sessions: sessionmaker[Session]) -> tuple[int, datetime, datetime]:
    """(the image read alone, the exam's result time, that image's), as the server
    stamped them."""
    with sessions() as session:
        alone = _seed(session)["nine"]
        exam_at = session.execute(select(ExamResult.created_at)).scalar_one()
        image_at = session.execute(select(Prediction.created_at)
                                   .where(Prediction.image_id == alone)).scalar_one()
    return alone, as_utc(exam_at), as_utc(image_at)


def _written_here(pdf: Path, moment: datetime, offset: timedelta) -> None:
    """A PDF written at ``moment`` (on the server's clock), as this host's file system,
    ``offset`` away from the server, stamps it."""
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.write_bytes(b"%PDF-1.4 a report")
    stamp = (moment + offset).timestamp()
    os.utime(pdf, (stamp, stamp))


def _flagged(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """The exam's and the image's rows whose PDF the worklist says predates the result."""
    with sessions() as session:
        rows = worklist_rows(session, WorklistFilter(), report_dir=settings.report_dir)
    return [str(row["study_uid"] or row["image_id"]) for row in rows
            if any(flag.startswith(STALE) for flag in row["flags"])]


def _rewritten(sessions: sessionmaker[Session], settings: Settings,
               monkeypatch: pytest.MonkeyPatch, alone: int) -> list[str]:
    """Which of the exam's and the image's PDFs a run writes again (batch 1's; its other
    image read alone has none yet, so it is always written)."""
    written: list[str] = []
    monkeypatch.setattr(exam_reports, "write_exam_report",
                        lambda _s, uid, *_: written.append(uid))
    monkeypatch.setattr(exam_reports, "write_image_report",
                        lambda _s, image_id, *_: written.append(str(image_id)))
    with sessions() as session:
        exam_reports.write_batch_exam_pdfs(session, 1, settings)
    return [name for name in written if name in (EXAM, str(alone))]


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_pdf_from_before_its_result_is_flagged_and_rewritten_one_from_after_is_kept(
        sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch,
        offset: timedelta) -> None:
    alone, exam_at, image_at = _results(sessions)
    host_clock_off_by(monkeypatch, offset, (clock,), raising=True)
    exam_pdf = exam_pdf_path(settings.report_dir, EXAM)
    image_pdf = image_pdf_path(settings.report_dir, alone)

    _written_here(exam_pdf, exam_at - timedelta(minutes=5), offset)
    _written_here(image_pdf, image_at - timedelta(minutes=5), offset)
    assert _flagged(sessions, settings) == [str(alone), EXAM]  # the 9 alone ranks first
    assert _rewritten(sessions, settings, monkeypatch, alone) == [EXAM, str(alone)]

    _written_here(exam_pdf, exam_at + timedelta(minutes=5), offset)
    _written_here(image_pdf, image_at + timedelta(minutes=5), offset)
    assert _flagged(sessions, settings) == []
    assert _rewritten(sessions, settings, monkeypatch, alone) == []
