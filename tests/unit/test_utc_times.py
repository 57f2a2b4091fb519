"""Times read in another zone are shown in UTC: PostgreSQL hands back aware datetimes in its
session's zone (the machine's, on a distribution's server), and every report labels its
times "UTC". The database side is tests/integration/test_report_time_zone.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from reportlab.platypus import Paragraph

from shared.db.schema import ExamResult
from shared.reports.exam_data import ExamReport
from shared.reports.exam_pdf import _exam_result
from shared.reports.layout import cell_text
from shared.timeutil import as_utc, utc_text

BERLIN = ZoneInfo("Europe/Berlin")
# 23:30 UTC on 24 November is 00:30 on the 25th in Berlin (UTC+1 in winter).
IN_BERLIN = datetime(2026, 11, 25, 0, 30, tzinfo=BERLIN)


def test_as_utc_converts_an_aware_time_to_utc() -> None:
    converted = as_utc(IN_BERLIN)
    assert converted == IN_BERLIN  # the same instant ...
    assert converted.utcoffset() == timedelta(0)  # ... on UTC's clock and calendar
    assert (converted.date().isoformat(), f"{converted:%H:%M}") == ("2026-11-24", "23:30")


def test_as_utc_takes_a_naive_time_as_utc() -> None:
    # SQLite hands stored times back naive: they were written in UTC.
    assert as_utc(datetime(2026, 11, 24, 23, 30)) == datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    assert as_utc(None) is None


def test_report_texts_labelled_utc_show_the_utc_clock() -> None:
    assert utc_text(IN_BERLIN) == "2026-11-24 23:30:00 UTC"
    assert utc_text(IN_BERLIN, seconds=False) == "2026-11-24 23:30 UTC"
    # The batch report's tables (PDF and HTML) and the exam PDF's timestamps.
    assert cell_text(IN_BERLIN) == "2026-11-24 23:30:00 UTC"


def _first_paragraph(report: ExamReport) -> str:
    first = _exam_result(report)[0]
    assert isinstance(first, Paragraph)
    return str(first.text)


def test_the_exam_pdf_says_in_utc_when_its_result_was_computed_and_when_it_waits_until(
        ) -> None:
    result = ExamResult(status="complete", version=1, label="normal", suspicion=2,
                        p_malignant=0.1, per_breast={}, views=[], created_at=IN_BERLIN)
    computed = _first_paragraph(ExamReport("1.2.3", None, None, None, result, []))
    assert "computed 2026-11-24 23:30 UTC" in computed
    waiting = _first_paragraph(ExamReport("1.2.3", None, None, None, None, [],
                                          due_at=IN_BERLIN))
    assert "until 2026-11-24 23:30 UTC" in waiting
