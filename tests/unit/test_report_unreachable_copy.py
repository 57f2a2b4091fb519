"""An archived copy the exam report cannot even stat (EACCES on its folder, ESTALE or EIO
on a share) is one view it cannot draw, not a failed report: on Python 3.11
``Path.exists`` raises for it, where it returns False for a missing file."""

from __future__ import annotations

import errno
import logging
import pathlib
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image, ModelVersion
from shared.exams import refresh_exam_results
from shared.imaging.model_input import ModelInputSource
from shared.reports.exam_data import load_exam_report
from shared.reports.exam_pdf import write_exam_pdf
from shared.reports.view_images import UNREADABLE, model_frame
from tests.unit.test_exam_own_view_scores import NINE, _exam


def _unreachable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Stat-ing anything in ``folder`` fails as a folder without search permission does."""
    real = pathlib.Path.exists

    def exists(self: Path, *args: Any, **kwargs: Any) -> bool:
        if str(self).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "exists", exists)


def test_the_exam_report_draws_around_a_copy_it_cannot_stat(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    engine = create_db_engine(Settings(database_url=sqlite_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[64, 64], path="/m")])
        session.flush()
        _exam(session, 1, {"L": NINE})
        image = session.query(Image).one()
        # The watcher filed it to failed/, on a share this process may not look into.
        image.archived_path = str(tmp_path / "share" / "failed" / "1L.dcm")
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
        report = load_exam_report(session, "1.2.9.1")
    engine.dispose()
    _unreachable(monkeypatch, tmp_path / "share")
    pdf = tmp_path / "exam.pdf"
    with caplog.at_level(logging.INFO, logger="shared.reports.view_images"):
        write_exam_pdf(report, pdf, max_pixels=10**8)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert [r.getMessage() for r in caplog.records] == [
        f"image {image.id} not available for the report: PermissionError"]


def test_a_copy_it_cannot_stat_is_an_unreadable_view(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "share" / "failed" / "x.dcm"
    _unreachable(monkeypatch, tmp_path / "share")
    frame = model_frame(ModelInputSource(str(copy), "L", None, (256, 256), 10**8), image_id=7)
    assert frame.pixels is None and frame.missing == UNREADABLE
