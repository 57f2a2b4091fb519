"""A view the exam report cannot draw is logged by its image id, never by its file name: a
name can hold the patient's name (no PHI in log lines) and a line break that forges a log
line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image, ModelVersion
from shared.exams import refresh_exam_results
from shared.imaging.model_input import ModelInputSource
from shared.reports.exam_data import load_exam_report
from shared.reports.exam_pdf import write_exam_pdf
from shared.reports.view_images import GONE, REPLACED, UNREADABLE, model_frame
from shared.synthetic import make_exam_set
from tests.unit.test_exam_own_view_scores import NINE, _exam

NAME = "DOE^JANE 1961-04-02\nERROR forged line.dcm"


def _source(path: Path) -> ModelInputSource:
    return ModelInputSource(str(path), "L", None, (256, 256), 10**8)


@pytest.mark.parametrize("case", ["gone", "replaced", "unreadable"])
def test_an_undrawn_view_is_logged_by_its_id_not_its_file_name(
        case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / NAME
    identity = None
    if case == "replaced":
        shutil.copy(make_exam_set(tmp_path / "set", n_exams=1, seed=4)[0], path)
        identity = "sha256:" + "0" * 64  # another image's
    elif case == "unreadable":
        path.write_bytes(b"not an image")
    with caplog.at_level(logging.INFO, logger="shared.reports.view_images"):
        frame = model_frame(_source(path), identity, image_id=17)
    assert frame.missing == {"gone": GONE, "replaced": REPLACED, "unreadable": UNREADABLE}[case]
    logged = [r.getMessage() for r in caplog.records]
    assert logged and all(m.startswith("image 17 ") for m in logged)
    assert not any("DOE" in m or "\n" in m or "forged" in m for m in logged)


def test_without_an_id_nothing_of_the_name_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.reports.view_images"):
        model_frame(_source(tmp_path / NAME))
    logged = [r.getMessage() for r in caplog.records]
    assert logged and not any("DOE" in m or "\n" in m for m in logged)


def test_the_exam_pdf_logs_a_view_it_cannot_draw_by_its_image_id(
        sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_db_engine(Settings(database_url=sqlite_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[64, 64], path="/m")])
        session.flush()
        _exam(session, 1, {"L": NINE})  # its file, /in/1L.dcm, is not there
        image = session.query(Image).one()
        image.source = str(tmp_path / NAME)
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
        report = load_exam_report(session, "1.2.9.1")
    engine.dispose()
    with caplog.at_level(logging.INFO, logger="shared.reports.view_images"):
        write_exam_pdf(report, tmp_path / "exam.pdf", max_pixels=10**8)
    assert [r.getMessage() for r in caplog.records] == [
        f"image {image.id} not drawn in the report: {GONE}"]
