"""The batch PDF's tables keep their words whole: a header, a rank, a status, an error code
or an image id broken mid-word ("ran" over "k", "incomplet" over "e"), and a study UID split
inside a number ("...8.4" over "98.777"), read wrong and were copied wrong: each exam's UID
now has a line of its own, across the page."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from reportlab.platypus import Flowable, Paragraph, Table

from shared.enums import ErrorCode
from shared.reports.batch_data import BatchSummary, FailureReason
from shared.reports.batch_pdf import _failures, worklist_table, write_summary_pdf
from shared.reports.layout import overview_rows
from shared.reports.pdf_parts import PAGE_WIDTH

SHORT_UID = "1.2.826.0.1.3680043.8.498.777"
LONG_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"  # 64 characters


def _exam(rank: int, uid: str, suspicion: int, status: str) -> dict[str, Any]:
    return {"rank": rank, "study_uid": uid, "suspicion": suspicion,
            "per_breast": {"L": {"suspicion": suspicion, "label": "malignant"}},
            "status": status, "flags": [], "report_path": None}


def _summary() -> BatchSummary:
    codes = [code.value for code in ErrorCode]
    failures = [{"image_id": 100000 + i, "file": f"f{i}.dcm", "error_code": code,
                 "error_message": "a reason"} for i, code in enumerate(codes)]
    return BatchSummary(
        batch_id=1, name=None, created_at=datetime(2026, 11, 24, tzinfo=UTC),
        finished_at=datetime(2026, 11, 25, tzinfo=UTC), by_state={"failed": len(codes)},
        by_class={}, suspicion_counts={}, per_day={}, images_per_minute=None, stage_times=[],
        failures=failures, failure_reasons=[FailureReason(c, 1, "a reason") for c in codes],
        worklist=[_exam(1, SHORT_UID, 10, "incomplete"), _exam(2, LONG_UID, 9, "complete"),
                  _exam(50, "manifest:EXAM-0001", 1, "incomplete")],
        exams=3, duplicates=0, synthetic_images=0, results=[])


def _lines(cell: Paragraph) -> list[str]:
    """The lines a wrapped paragraph drew."""
    para = cell.blPara
    if para.kind == 0:
        return [" ".join(words) for _, words in para.lines]
    return ["".join(frag.text for frag in line.words).strip() for line in para.lines]


def _wrapped(grid: Flowable) -> list[list[Paragraph]]:
    """The table's cells, laid out at the page's width."""
    assert isinstance(grid, Table)
    grid.wrap(PAGE_WIDTH, 10_000)
    return [[cell[0] for cell in row] for row in grid._cellvalues]  # type: ignore[attr-defined]


def _assert_words_whole(cells: list[Paragraph]) -> None:
    for cell in cells:
        text = cell.getPlainText()
        assert " ".join(_lines(cell)).split() == text.split(), (text, _lines(cell))


def test_worklist_words_stay_whole_and_each_uid_has_a_line_of_its_own() -> None:
    header, *rows = _wrapped(worklist_table(_summary()))
    _assert_words_whole(header)
    columns = [h.getPlainText() for h in header]
    scores, uids = rows[0::2], rows[1::2]
    for name in ("rank", "suspicion", "status", "left"):
        _assert_words_whole([row[columns.index(name)] for row in scores])
    assert [row[columns.index("rank")].getPlainText() for row in scores] == ["1", "2", "50"]
    # Even a 64-character UID is one line, under its exam's scores.
    assert [_lines(row[0]) for row in uids] == [
        [f"study_uid: {uid}"] for uid in (SHORT_UID, LONG_UID, "manifest:EXAM-0001")]


def test_failure_tables_keep_ids_and_error_codes_whole() -> None:
    reasons, failed = (_wrapped(t) for t in _failures(_summary()) if isinstance(t, Table))
    _assert_words_whole(reasons[0] + [row[0] for row in reasons[1:]])
    _assert_words_whole(failed[0] + [row[i] for row in failed[1:] for i in (0, 2)])


@pytest.mark.skipif(not shutil.which("pdftotext"),
                    reason="poppler-utils (pdftotext) is not installed")
def test_the_pdf_text_shows_headers_statuses_and_uids_whole(tmp_path: Path) -> None:
    path = write_summary_pdf(_summary(), tmp_path / "batch.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout
    words = text.split()
    for word in ("rank", "suspicion", "incomplete", "image_id", SHORT_UID, LONG_UID,
                 *(code.value for code in ErrorCode)):
        assert word in words, word


def test_a_finished_batch_that_scored_nothing_says_so_not_none_yet() -> None:
    finished = _summary()  # every image failed
    assert dict(overview_rows(finished))["model"] == "none (no image scored)"
    running = dataclasses.replace(finished, finished_at=None)
    assert dict(overview_rows(running))["model"] == "none yet"
