"""Reports on a PostgreSQL server whose time zone is not UTC (a distribution's server takes
the machine's): times are shown, and results counted by day, in UTC, as on SQLite.

A batch scored at 23:30 UTC is at 00:30 the next day in Berlin. Before, the batch report
said "created 00:30:00 UTC", the exam PDF printed Berlin's clock labelled UTC, and
`mammo stats --since 23:00Z --until <next day>` counted its images on a day outside that
range.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, insert, make_url, text
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Prediction, Study
from shared.reports.batch_data import collect_batch_summary
from shared.reports.exam_data import load_exam_report
from shared.reports.exam_pdf import _exam_result
from shared.reports.layout import cell_text, overview_rows
from shared.reports.stats import StatsFilter, collect_stats
from tests.conftest import PG_HOST, PG_PORT

AT = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)  # 00:30 on the 25th in Berlin
DAY = {"2026-11-24": 4}
STUDY = "1.2.826.0.1.7"
VIEWS = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))


@pytest.fixture
def berlin_url(postgres_url: str) -> str:
    """A fresh database whose sessions default to Berlin's time zone."""
    name = make_url(postgres_url).database
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Europe/Berlin'")
    return postgres_url


@pytest.fixture
def settings(berlin_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=berlin_url, broker_url=None,  # type: ignore[call-arg]
                    report_dir=tmp_path / "reports", _env_file=None)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    _seed_batch_at_23_30_utc(engine)
    yield engine
    engine.dispose()


def _seed_batch_at_23_30_utc(engine: Engine) -> None:
    """One batch of one exam: 4 views submitted, scored and given a result at 23:30 UTC."""
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [{
            "id": 1, "name": "default", "version": "1.0.0", "sha256": "0" * 64,
            "preprocessing_version": "2", "classes": ["normal", "benign", "malignant"],
            "input_size": [512, 512], "path": "/models/default/1.0.0"}])
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": AT}])
        conn.execute(insert(Study), [{"id": 1, "study_uid": STUDY, "created_at": AT}])
        conn.execute(insert(Image), [{
            "id": i, "identity": f"sha256:tz-{i}", "batch_id": 1, "study_id": 1,
            "source": f"/in/{i}.dcm", "format": "dicom", "laterality": lat, "view": view,
            "state": "done", "attempts": 1, "created_at": AT, "finished_at": AT}
            for i, (lat, view) in enumerate(VIEWS, start=1)])
        conn.execute(insert(Prediction), [{
            "id": i, "image_id": i, "model_version_id": 1, "preprocessing_version": "2",
            "label": "normal", "p_normal": 0.8, "p_benign": 0.1, "p_malignant": 0.1,
            "suspicion": 2, "decode_ms": 1.0, "preprocess_ms": 1.0, "infer_ms": 1.0,
            "forward_pass_id": "fp-1", "forward_pass_size": 4, "created_at": AT}
            for i in range(1, 5)])
        conn.execute(insert(ExamResult), [{
            "study_id": 1, "version": 1, "status": "complete", "reason": "complete",
            "label": "normal", "p_malignant": 0.1, "suspicion": 2, "per_breast": {},
            "views": [], "missing_views": [], "flags": [], "n_images": 4, "n_failed": 0,
            "signature": "s" * 64, "created_at": AT}])


def _stats_in_range(session: Session, settings: Settings) -> dict[str, int]:
    flt = StatsFilter(since=AT - timedelta(minutes=30), until=datetime(2026, 11, 25, tzinfo=UTC))
    return dict(collect_stats(session, settings, flt)["per_day"])


def test_reports_show_utc_times_and_count_utc_days_on_a_server_in_berlin(
        engine: Engine, settings: Settings, tmp_path: Path) -> None:
    with make_session_factory(engine)() as session:
        # Every image of the range lies on 24 November, UTC: none on a day outside it.
        assert _stats_in_range(session, settings) == DAY
        summary = collect_batch_summary(session, 1, report_dir=tmp_path)
        exam = load_exam_report(session, STUDY)
    assert summary.per_day == DAY
    assert cell_text(dict(overview_rows(summary))["created"]) == "2026-11-24 23:30:00 UTC"
    assert {cell_text(v.submitted_at) for v in exam.views} == {"2026-11-24 23:30:00 UTC"}
    assert {cell_text(v.predicted_at) for v in exam.views} == {"2026-11-24 23:30:00 UTC"}
    computed = str(getattr(_exam_result(exam)[0], "text", ""))
    assert "computed 2026-11-24 23:30 UTC" in computed


def test_every_pooled_connection_works_in_utc(engine: Engine) -> None:
    # Several at once (each a new server session), then one after the pool was emptied.
    conns = [engine.connect() for _ in range(3)]
    zones = [c.execute(text("SHOW TIME ZONE")).scalar_one() for c in conns]
    for conn in conns:
        conn.rollback()  # what the pool does on return: the zone must outlive it
        conn.close()
    with engine.connect() as conn:
        zones.append(conn.execute(text("SHOW TIME ZONE")).scalar_one())
    engine.dispose()
    with engine.connect() as conn:
        zones.append(conn.execute(text("SHOW TIME ZONE")).scalar_one())
    assert zones == ["UTC"] * 5


def test_days_are_utc_ones_on_a_connection_left_in_berlin(
        engine: Engine, settings: Settings, tmp_path: Path) -> None:
    """A connection made without the engine's setting (another tool's engine, or a pooler
    that hands a transaction another server session) still counts UTC days."""
    plain = create_engine(settings.database_url)
    try:
        with Session(plain) as session:
            assert session.execute(text("SHOW TIME ZONE")).scalar_one() == "Europe/Berlin"
            assert _stats_in_range(session, settings) == DAY
            assert collect_batch_summary(session, 1, report_dir=tmp_path).per_day == DAY
    finally:
        plain.dispose()

