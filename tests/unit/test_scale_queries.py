"""The queries every batch, sweep and status run pay stay bounded by what they are about, on
PostgreSQL before its first ANALYZE too (a restored or migrated database): the batch
notice's class counts, a batch's pace, the worklist's exam views and the workers seen lately
read the predictions of their own images (or minutes), not every prediction ever stored;
the exam follow-up no longer reads every image. Migration 0018 adds the indexes they use
to a database holding rows, and ANALYZE runs after migrating and at a worker's start on a
database never analysed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, inspect, select, text
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import engine as db_engine
from shared.db.engine import create_db_engine, ensure_schema, upgrade
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Prediction, Study
from shared.exams import studies_awaiting_result
from shared.notify.content import _class_counts
from shared.queries import scoring_rate, scoring_work, workers_seen
from shared.reports.worklist import _exam_views
from tests.helpers.old_schema import migrated_to

OLD = 3000  # images (and predictions) of a year's earlier batches
NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
_EARLIER_HEADS = ("0017", "0012", "0013", "0016")
_TABLES = ("images", "predictions", "studies", "exam_results", "batches", "model_versions")


def _engine(url: str) -> Engine:
    return create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]


def _seed(engine: Engine) -> None:
    """Batch 1: OLD images of OLD / 4 exams, scored a month ago, each with its exam result.
    Batch 2: one 4-view exam scored now, one view scored again by a second model."""
    with Session(engine) as s:
        s.add_all([Batch(id=1, name="old"), Batch(id=2, name="tonight")])
        s.add_all([ModelVersion(id=n, name="m", version=f"1.0.{n}", sha256=f"{n}" * 64,
                                preprocessing_version="2", classes=["a"], input_size=[1, 1],
                                path=f"/m/{n}") for n in (1, 2)])
        s.flush()
        studies = OLD // 4 + 1
        s.execute(insert(Study), [{"id": n, "study_uid": f"1.2.{n}"}
                                  for n in range(1, studies + 1)])
        images = [{"id": i, "identity": f"sop:{i}", "batch_id": 1 if i <= OLD else 2,
                   "study_id": (i - 1) // 4 + 1, "source": f"/in/{i}.dcm", "format": "dicom",
                   "laterality": "LR"[i % 2], "view": ("CC", "MLO")[(i // 2) % 2],
                   "state": "done"} for i in range(1, OLD + 5)]
        s.execute(insert(Image), images)
        predictions = [{"id": i, "image_id": i, "model_version_id": 1,
                        "preprocessing_version": "2", "label": "normal", "p_normal": 0.9,
                        "p_benign": 0.05, "p_malignant": 0.05, "suspicion": 1,
                        "decode_ms": 10.0, "preprocess_ms": 5.0, "infer_ms": 20.0,
                        "forward_pass_id": f"fp{(i - 1) // 4}", "forward_pass_size": 4,
                        "input_notes": {"inverted": "read inverted"} if i == OLD + 3 else {},
                        "worker": "w1",
                        "created_at": (NOW - timedelta(days=30) if i <= OLD
                                       else NOW + timedelta(seconds=i - OLD))}
                       for i in range(1, OLD + 5)]
        predictions.append({**predictions[-1], "id": OLD + 5, "model_version_id": 2,
                            "label": "malignant", "suspicion": 9,
                            "created_at": NOW + timedelta(seconds=30)})
        s.execute(insert(Prediction), predictions)
        s.execute(insert(ExamResult), [
            {"study_id": n, "version": 1, "status": "complete", "reason": "complete",
             "per_breast": {}, "views": [], "missing_views": [], "flags": [], "n_images": 4,
             "n_failed": 0, "signature": f"s{n}", "created_at": NOW - timedelta(days=30)}
            for n in range(1, studies)])
        s.commit()


@pytest.fixture
def unanalysed_pg(postgres_url: str) -> Iterator[Engine]:
    """A PostgreSQL database holding a year's history in small, never analysed (no
    statistics: as restored), autovacuum kept away from it."""
    engine = _engine(postgres_url)
    ensure_schema(engine)
    with engine.begin() as conn:
        for table in _TABLES:
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    _seed(engine)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_stat_reset()"))
        # What a restore leaves: no column statistics, no row counts.
        conn.execute(text("DELETE FROM pg_statistic WHERE starelid IN "
                          "(SELECT oid FROM pg_class WHERE relname = ANY(:t))"),
                     {"t": list(_TABLES)})
        conn.execute(text("UPDATE pg_class SET reltuples = -1, relpages = 0 "
                          "WHERE relname = ANY(:t)"), {"t": list(_TABLES)})
    yield engine
    engine.dispose()


def _rows_read(engine: Engine, table: str, call: Callable[[Session], Any]) -> int:
    """Rows ``call``'s statements read from ``table``, by EXPLAIN ANALYZE of each statement
    it ran, with its parameters."""
    statements: list[tuple[str, Any]] = []

    def _seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", _seen)
    try:
        with Session(engine) as session:
            call(session)
    finally:
        event.remove(engine, "before_cursor_execute", _seen)
    read = 0
    with engine.connect() as conn:
        for statement, parameters in statements:
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}",
                                        parameters).scalar_one()
            read += _on_table(plan[0]["Plan"], table)
    return read


def _on_table(node: dict[str, Any], table: str) -> int:
    """Rows a plan node read from ``table``: those it passed on and those its filter
    dropped (per loop, both)."""
    own = 0
    if node.get("Relation Name") == table:
        own = round((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                     + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"])
    return own + sum(_on_table(child, table) for child in node.get("Plans", []))


def test_the_batch_notice_counts_classes_from_the_batch_s_predictions_only(
        unanalysed_pg: Engine) -> None:
    counts: dict[str, int] = {}
    read = _rows_read(unanalysed_pg, "predictions",
                      lambda s: counts.update(_class_counts(s, 2)))
    assert counts == {"normal": 3, "malignant": 1}  # image OLD+4: model 2's is its latest
    assert read <= 10, f"{read} predictions read for a batch of 4 images"


def test_a_batch_s_pace_reads_its_own_first_predictions_only(unanalysed_pg: Engine) -> None:
    found: list[Any] = []
    read = _rows_read(unanalysed_pg, "predictions", lambda s: found.extend(
        [scoring_work(s, 2), scoring_rate(s, 2)]))
    work, rate = found
    # The first forward pass's 4 images' preparation (15 ms each) and its whole pass (80 ms)
    # before the first prediction; the last first-prediction 3 s later (not model 2's).
    assert work.started == NOW + timedelta(seconds=1) - timedelta(milliseconds=140)
    assert work.last == NOW + timedelta(seconds=4)
    assert rate == pytest.approx(4 / 3.14 * 60)
    assert read <= 20, f"{read} predictions read for a batch of 4 images"


def test_the_worklist_s_exam_views_read_their_exams_only(unanalysed_pg: Engine) -> None:
    exam = OLD // 4 + 1
    found: dict[int, Any] = {}
    read_predictions = _rows_read(unanalysed_pg, "predictions",
                                  lambda s: found.update(_exam_views(s, [1, exam])))
    read_images = _rows_read(unanalysed_pg, "images", lambda s: _exam_views(s, [1, exam]))
    assert found[exam].models == {("m:1.0.1", "1" * 64), ("m:1.0.2", "2" * 64)}
    assert [v.image_id for v in found[exam].noted] == [OLD + 3]
    assert read_predictions <= 30, f"{read_predictions} predictions read for 2 exams"
    assert read_images <= 30, f"{read_images} images read for 2 exams"


def test_the_workers_seen_lately_are_read_from_the_last_minutes_predictions(
        unanalysed_pg: Engine) -> None:
    seen: list[dict[str, Any]] = []
    read = _rows_read(unanalysed_pg, "predictions", lambda s: seen.extend(
        workers_seen(s, now=NOW + timedelta(minutes=1))))
    assert [(w["worker"], w["predictions"]) for w in seen] == [("w1", 5)]
    assert read <= 10, f"{read} predictions read for the last 10 minutes' 5"


def test_the_exam_follow_up_does_not_read_every_image(unanalysed_pg: Engine) -> None:
    with unanalysed_pg.begin() as conn:  # one exam owed a refresh, one never computed
        conn.execute(text("UPDATE studies SET exam_inputs_seq = 1 WHERE id = 7"))
    awaiting: list[int] = []
    read = _rows_read(unanalysed_pg, "images",
                      lambda s: awaiting.extend(studies_awaiting_result(s)))
    assert awaiting == [7, OLD // 4 + 1]
    assert read <= 10, f"{read} images read to find 2 exams"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0018_indexes_a_database_that_holds_rows(backend: str, sqlite_url: str,
                                                 request: pytest.FixtureRequest) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    migrated_to(url, _EARLIER_HEADS)  # as the release before 0018 left it
    engine = _engine(url)
    assert "ix_predictions_created_at" not in _indexes(engine)
    _seed(engine)
    before, after = upgrade(engine)
    assert "0018" not in (before or "") and "0018" in (after or "")
    assert {"ix_predictions_image_id_id", "ix_predictions_created_at"} <= _indexes(engine)
    with Session(engine) as s:
        assert s.scalar(select(Prediction.id).order_by(Prediction.id.desc()).limit(1)) == OLD + 5
        assert _class_counts(s, 2) == {"normal": 3, "malignant": 1}
    engine.dispose()


def _indexes(engine: Engine) -> set[str]:
    return {str(ix["name"]) for ix in inspect(engine).get_indexes("predictions")}


def _analysed(engine: Engine) -> set[str]:
    """The tables PostgreSQL's statistics say were analysed (they reach the view within
    a second or so of the ANALYZE)."""
    deadline = time.monotonic() + 5
    while True:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            found = set(conn.execute(text(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
            )).scalars())
        if {"images", "predictions"} <= found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_migrating_analyses_the_database(postgres_url: str) -> None:
    migrated_to(postgres_url, _EARLIER_HEADS)
    engine = _engine(postgres_url)
    _seed(engine)
    upgrade(engine)
    assert {"images", "predictions"} <= _analysed(engine)
    engine.dispose()


def test_a_worker_starting_on_a_database_never_analysed_analyses_it(
        unanalysed_pg: Engine, tiny_model_spec: Any, postgres_url: str) -> None:
    from worker.runtime import WorkerRuntime

    with unanalysed_pg.connect() as conn:
        assert not conn.execute(text(
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
        )).scalar_one()
    settings = Settings(database_url=postgres_url, _env_file=None)  # type: ignore[call-arg]
    runtime = WorkerRuntime(settings, model_spec=tiny_model_spec)
    runtime.pin_model()
    assert {"images", "predictions"} <= _analysed(unanalysed_pg)
    # Once analysed, a start does not analyse again.
    assert db_engine.analyze_if_never_analyzed(unanalysed_pg) is False
