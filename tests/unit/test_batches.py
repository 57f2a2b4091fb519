"""Drop-folder day batches: named per folder and day, summarised once the day is over."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from shared.batches import summary_due_at, watch_batch_day, watch_batch_name


def test_names_carry_the_folder_and_day_even_when_shortened() -> None:
    name = watch_batch_name(Path("/data/in"), date(2026, 12, 1))
    assert name == "watch:/data/in:2026-12-01"
    long = watch_batch_name(Path("/" + "x" * 300), date(2026, 12, 1))
    assert len(long) == 200 and long.startswith("watch:...")
    assert watch_batch_day(name) == watch_batch_day(long) == date(2026, 12, 1)
    assert watch_batch_day("night-24") is None and watch_batch_day(None) is None
    assert watch_batch_day("watch:/x:not-a-date") is None


def test_a_day_batch_is_due_once_finished_and_its_day_over() -> None:
    finished = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)
    assert summary_due_at("night-24", finished) == finished  # submitted: at once
    assert summary_due_at("night-24", None) is None
    day = watch_batch_name(Path("/in"), date(2026, 12, 1))
    assert summary_due_at(day, finished) == datetime(2026, 12, 2, tzinfo=UTC)
    late = datetime(2026, 12, 2, 0, 10, tzinfo=UTC)  # its last file finished after midnight
    assert summary_due_at(day, late) == late
    naive = datetime(2026, 12, 1, 7, 30)  # SQLite hands back naive UTC
    assert summary_due_at("night-24", naive) == finished
