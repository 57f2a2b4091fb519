"""What the exam PDF and the batch summary say: the model behind each view, and which images
are synthetic test data (read from the PDF's story, as reportlab lays it out)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from reportlab.platypus import Flowable, KeepTogether, Paragraph, Table
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.db.schema import Image, ModelVersion
from shared.reports import exam_pdf
from shared.reports.batch_data import collect_batch_summary
from shared.reports.exam_reports import write_exam_report
from shared.reports.layout import batch_title
from shared.synthetic import SYNTHETIC_LABEL, SYNTHETIC_MANUFACTURER
from tests.helpers.seed_results import seed_results

STUDY = "1.2.3.1"  # seeded: images 1-4, all done; odd ids by default:1.1.0, even by 1.0.0


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'seeded.db'}",  # type: ignore[call-arg]
                        broker_url=None, report_dir=tmp_path / "reports", _env_file=None)
    engine = create_db_engine(settings)
    ensure_schema(engine)
    seed_results(engine, 16, n_batches=2, seed=3)
    engine.dispose()
    yield settings


def _synthetic(settings: Settings, image_ids: list[int]) -> None:
    engine = create_db_engine(settings)
    with engine.begin() as conn:
        conn.execute(update(Image).where(Image.id.in_(image_ids)).values(
            manufacturer=SYNTHETIC_MANUFACTURER))
    engine.dispose()


def _texts(item: Any) -> Iterator[str]:
    if isinstance(item, Paragraph):
        yield item.text
    elif isinstance(item, Table):
        for row in item._cellvalues:
            yield from _texts(row)
    elif isinstance(item, KeepTogether):
        yield from _texts(item._content)
    elif isinstance(item, list | tuple):
        for part in item:
            yield from _texts(part)
    elif isinstance(item, str):
        yield item


def _view_panels(story: list[Flowable]) -> dict[int, str]:
    """{image id: the text of its view panel} from the exam PDF's grid of views."""
    panels: dict[int, str] = {}
    for grid in (f for f in story if isinstance(f, Table)):
        cells = (c for row in grid._cellvalues for c in row)
        for cell in (c for c in cells if isinstance(c, list | tuple) and c):
            title = next(_texts(cell[0]), "")
            if "(image " in title:
                panels[int(title.rsplit("(image ", 1)[1].rstrip(")"))] = " | ".join(_texts(cell))
    return panels


def _exam_story(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[Flowable]:
    built: list[list[Flowable]] = []
    real = exam_pdf.build_pdf

    def keep(path: Path, title: str, story: list[Flowable]) -> Path:
        built.append(list(story))  # building consumes the list
        return real(path, title, story)

    monkeypatch.setattr(exam_pdf, "build_pdf", keep)
    engine = create_db_engine(settings)
    with Session(engine) as session:
        write_exam_report(session, STUDY, settings.report_dir / "exam.pdf", "pdf", settings)
    engine.dispose()
    [story] = built
    return story


def test_each_view_panel_names_the_model_that_scored_it(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    panels = _view_panels(_exam_story(settings, monkeypatch))
    assert sorted(panels) == [1, 2, 3, 4]
    for image_id, text in panels.items():
        expected = "default:1.1.0" if image_id % 2 else "default:1.0.0"
        assert f"model {expected}" in text, text


def test_an_exam_with_one_synthetic_image_is_not_labelled_synthetic_as_a_whole(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _synthetic(settings, [2])
    story = _exam_story(settings, monkeypatch)
    warnings = [t for f in story[:4] for t in _texts(f)]
    assert not any("the results describe no one" in t for t in warnings), warnings
    assert any("1 of 4 images are synthetic test data" in t for t in warnings), warnings
    panels = _view_panels(story)
    assert [i for i, text in panels.items() if SYNTHETIC_LABEL in text] == [2]


def test_an_all_synthetic_exam_says_it_describes_no_one(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _synthetic(settings, [1, 2, 3, 4])
    texts = list(_texts(_exam_story(settings, monkeypatch)))
    assert any("the results describe no one" in t for t in texts), texts


def test_a_batch_is_labelled_synthetic_only_when_every_image_is(settings: Settings) -> None:
    engine = create_db_engine(settings)
    with Session(engine) as session:
        batch_images = [i for i in range(1, 17) if (i - 1) // 4 % 2 == 0]  # batch 1
        _synthetic(settings, batch_images[:1])
        partly = batch_title(collect_batch_summary(session, 1, report_dir=settings.report_dir))
        _synthetic(settings, batch_images)
        wholly = batch_title(collect_batch_summary(session, 1, report_dir=settings.report_dir))
    engine.dispose()
    assert partly.endswith(f"1 of {len(batch_images)} images are synthetic test data")
    assert "not patients" not in partly
    assert wholly.endswith("SYNTHETIC TEST DATA, not patients")


def _update(settings: Settings, table: Any, where: Any, **values: Any) -> None:
    engine = create_db_engine(settings)
    with engine.begin() as conn:
        conn.execute(update(table).where(where).values(**values))
    engine.dispose()


def test_a_view_panel_tells_two_models_of_one_name_and_version_apart(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model retrained under the shipped one's NAME:VERSION scored the odd images."""
    _update(settings, ModelVersion, ModelVersion.id == 2, version="1.0.0", sha256="f" * 64)
    panels = _view_panels(_exam_story(settings, monkeypatch))
    for image_id, text in panels.items():
        digits = "ffffffffffff" if image_id % 2 else "000000000000"
        assert f"model default:1.0.0 (sha256 {digits})" in text, text


def test_the_exam_pdf_flags_burned_in_annotation(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _update(settings, Image, Image.id == 3, burned_in_annotation=True)
    texts = list(_texts(_exam_story(settings, monkeypatch)))
    flags = [t for t in texts if "burned-in annotation" in t]
    assert len(flags) == 1 and "image(s) 3 (BurnedInAnnotation YES)" in flags[0], texts


def test_an_exam_pdf_without_a_result_says_until_when_its_views_are_awaited(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = datetime.now(UTC) - timedelta(minutes=5)
    _update(settings, Image, Image.id.in_([1, 2, 3]), created_at=sent)
    _update(settings, Image, Image.id == 4, study_id=None)  # its R-MLO never came
    due = sent + timedelta(seconds=settings.exam_timeout_s)
    texts = " ".join(_texts(_exam_story(settings, monkeypatch)))
    assert (f"No exam result yet: R-MLO not received. The exam waits for them until "
            f"{due:%Y-%m-%d %H:%M} UTC") in texts, texts
    assert "`mammo worklist --write-reports`" in texts
