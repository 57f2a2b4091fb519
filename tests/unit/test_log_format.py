"""Log times are UTC and labelled, whatever the host's zone.

A Los Angeles worker logged "2026-12-06 02:40:18" for an event `mammo status` showed at
10:40 UTC: the format had the host's local time and no label. The processes themselves
are checked in tests/integration/test_log_lines.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from celery.utils.log import ColorFormatter

from shared.logs import LOG_FORMAT, UtcFormatter, in_utc

AT = datetime(2026, 12, 6, 10, 40, 18, 123000, tzinfo=UTC)
LINE = "2026-12-06 10:40:18,123Z WARNING worker.sweeper: follow-up: 1 batch summary(ies)"


@pytest.fixture(autouse=True)
def in_los_angeles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    assert time.localtime(AT.timestamp()).tm_hour == 2  # the zone is in effect
    yield
    monkeypatch.undo()
    time.tzset()


def _record() -> logging.LogRecord:
    record = logging.LogRecord("worker.sweeper", logging.WARNING, __file__, 1,
                               "follow-up: %d batch summary(ies)", (1,), None)
    record.created, record.msecs = AT.timestamp(), 123.0
    return record


def test_a_log_line_is_stamped_in_utc_with_a_z() -> None:
    assert UtcFormatter(LOG_FORMAT).format(_record()) == LINE


def test_celerys_formatter_is_brought_into_line() -> None:
    """What a worker does to the handlers Celery makes (a pool process's death)."""
    formatter = ColorFormatter(LOG_FORMAT, use_color=False)
    in_utc(formatter)
    assert formatter.format(_record()) == LINE
