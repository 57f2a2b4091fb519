"""`mammo run` rewrites an earlier batch's summary written before that batch finished,
judging the file's time against the finish across the two clocks.

A re-run of a folder whose first run was interrupted writes that first batch's reports
once it is finished, unless its summary is current (written after the finish). The finish
is stamped on the database's clock and the file's time on this host's: compared as they
were, on a host 20 minutes ahead of the server a summary written 5 minutes before the
finish (the unfinished batch's) read as current and was kept, and on a host behind one
written after the finish read as stale and was drawn again. Here the host's clock (every
``utcnow`` the producer reads) is set 20 minutes off a real PostgreSQL server's, and the
summary's modification time is the one this host's file system would have stamped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from producer.cli import commands_run
from producer.cli.context import CliContext
from producer.registration import create_batch
from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.schema import Batch, DuplicateSubmission
from shared.enums import Priority
from shared.reports.batch_summary import batch_report_path
from shared.timeutil import as_utc
from tests.helpers.clock import host_clock_off_by
from tests.helpers.db import queued_batch

SKEW = timedelta(minutes=20)


@pytest.fixture
def cli(postgres_url: str, tmp_path: Path) -> Iterator[CliContext]:
    context = CliContext(Settings(database_url=postgres_url, broker_url=None,  # type: ignore[call-arg]
                                  report_dir=tmp_path / "reports", _env_file=None))
    yield context
    context.engine.dispose()


def _rerun_of_a_finished_batch(cli: CliContext) -> tuple[int, int, datetime]:
    """(the first run's batch, finished; the re-run's batch, its copies; the finish)."""
    first, ids = queued_batch(cli.sessions, "first run", 2)
    with cli.sessions() as session:
        assert lifecycle.mark_done(session, ids) == ids
        assert lifecycle.finish_batches(session, [first]) == [first]
        session.commit()
    rerun = create_batch(cli.sessions, name="re-run", priority=Priority.ROUTINE, mode="embedded")
    with cli.sessions() as session:
        session.add_all(DuplicateSubmission(batch_id=rerun, image_id=i, source=f"/in/{i}.png")
                        for i in ids)
        session.commit()
        finished = as_utc(session.execute(
            select(Batch.finished_at).where(Batch.id == first)).scalar_one())
    assert finished is not None
    return first, rerun, finished


def _rewritten(cli: CliContext, monkeypatch: pytest.MonkeyPatch, rerun: int) -> list[int]:
    """The earlier batches whose reports the re-run writes again."""
    written: list[int] = []

    def write(_cli: CliContext, batch_id: int, _settings: Settings) -> object:
        written.append(batch_id)
        return None

    monkeypatch.setattr(commands_run, "_write_documents", write)
    monkeypatch.setattr(commands_run, "_say_documents", lambda *_: None)
    commands_run._report_earlier_batches(cli, rerun, cli.settings)
    return written


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_rerun_rewrites_a_summary_from_before_the_finish_and_keeps_one_from_after(
        cli: CliContext, monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    first, rerun, finished = _rerun_of_a_finished_batch(cli)

    host_clock_off_by(monkeypatch, offset, (clock, commands_run))
    summary = batch_report_path(cli.settings, first, "html")
    summary.parent.mkdir(parents=True)
    summary.write_text("<html>the batch while it was still being scored</html>")

    def written_here(moment: datetime) -> None:  # as this host's file system stamps it
        stamp = (moment + offset).timestamp()
        os.utime(summary, (stamp, stamp))

    written_here(finished - timedelta(minutes=5))
    assert _rewritten(cli, monkeypatch, rerun) == [first]
    written_here(finished + timedelta(minutes=5))
    assert _rewritten(cli, monkeypatch, rerun) == []
