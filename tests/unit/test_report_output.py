"""A report file is whole or absent: a full disk never leaves a truncated one behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from shared.errors import ReportWriteError
from shared.reports.output import report_file


def test_a_write_cut_short_leaves_no_file_and_says_why(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "exam.pdf"
    with (pytest.raises(ReportWriteError, match="No space left on device"),
          report_file(target) as temporary):
        temporary.write_bytes(b"%PDF-1.4 half a report")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # nor its temporary


def test_a_whole_write_replaces_the_earlier_report(tmp_path: Path) -> None:
    target = tmp_path / "batch-1.json"
    target.write_text("old")
    with report_file(target) as temporary:
        assert temporary != target and temporary.parent == target.parent
        temporary.write_text("new")
        assert target.read_text() == "old"  # readers see the old one until the end
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]
