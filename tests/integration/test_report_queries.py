"""Results filters, paging, worklist and stats on a seeded database: SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, insert, select, update
from sqlalchemy.orm import Session

from producer.cli.main import cli
from shared.config import Settings
from shared.db.engine import ensure_schema, make_session_factory
from shared.db.schema import (
    Batch,
    DuplicateSubmission,
    ExamResult,
    Image,
    ModelVersion,
    Prediction,
    Study,
)
from shared.exams import refresh_due_exams
from shared.queries import ResultFilter, list_results
from shared.reports.batch_data import collect_batch_summary
from shared.reports.layout import no_worklist_text, overview_rows, worklist_heading
from shared.reports.stats import StatsFilter, collect_stats
from shared.reports.worklist import WorklistFilter, exam_pdf_path, worklist_rows
from shared.timeutil import as_utc
from tests.helpers.seed_results import START, Seeded, seed_results

N_IMAGES = 400


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def seeded(db_url: str) -> Iterator[tuple[Engine, Seeded]]:
    engine = create_engine(db_url)
    ensure_schema(engine)
    data = seed_results(engine, N_IMAGES, n_batches=4, days=10)
    yield engine, data
    engine.dispose()


def _ids(engine: Engine, flt: ResultFilter) -> list[int]:
    with make_session_factory(engine)() as session:
        return [r["image_id"] for r in list_results(session, flt)]


def _expected(data: Seeded, keep: Callable[[dict[str, Any], dict[str, Any] | None,
                                           dict[str, Any]], bool]) -> list[int]:
    studies = {s["id"]: s for s in data.studies}
    return [im["id"] for im in data.images
            if keep(im, data.predictions.get(im["id"]), studies[im["study_id"]])]


DAY3 = START + timedelta(days=3)
DAY6 = START + timedelta(days=6)
FILTERS: dict[str, tuple[ResultFilter, Callable[..., bool]]] = {
    "batch": (ResultFilter(batch_id=2), lambda im, p, s: im["batch_id"] == 2),
    "study": (ResultFilter(study_uid="1.2.3.7"), lambda im, p, s: s["study_uid"] == "1.2.3.7"),
    "patient": (ResultFilter(patient_pseudonym="pseudo-007"),
                lambda im, p, s: s["patient_pseudonym"] == "pseudo-007"),
    "label": (ResultFilter(label="benign"), lambda im, p, s: p is not None
              and p["label"] == "benign"),
    "min_score": (ResultFilter(min_suspicion=7), lambda im, p, s: p is not None
                  and p["suspicion"] >= 7),
    "dates": (ResultFilter(since=DAY3, until=DAY6),
              lambda im, p, s: DAY3 <= im["created_at"] < DAY6),
    "model_version": (ResultFilter(model_version="1.1.0"),
                      lambda im, p, s: p is not None and p["model_version_id"] == 2),
    "state": (ResultFilter(state="failed"), lambda im, p, s: im["state"] == "failed"),
    "combined": (ResultFilter(batch_id=1, label="normal", min_suspicion=3, since=DAY3),
                 lambda im, p, s: im["batch_id"] == 1 and p is not None
                 and p["label"] == "normal" and p["suspicion"] >= 3
                 and im["created_at"] >= DAY3),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_each_results_filter_matches_the_seeded_truth(
        seeded: tuple[Engine, Seeded], name: str) -> None:
    engine, data = seeded
    flt, keep = FILTERS[name]
    expected = _expected(data, keep)
    assert expected, f"the seed gives filter {name} nothing to find"
    assert len(expected) < N_IMAGES
    assert _ids(engine, flt) == expected


def test_results_show_each_image_once_with_its_latest_prediction(
        seeded: tuple[Engine, Seeded]) -> None:
    engine, data = seeded
    rerun = [i for i, p in data.predictions.items() if p["model_version_id"] == 1][:5]
    with engine.begin() as conn:  # a later model version re-ran five images
        conn.execute(insert(Prediction), [
            {**data.predictions[i], "id": 10_000 + i, "model_version_id": 2, "label": "malignant",
             "suspicion": 10} for i in rerun])
    with make_session_factory(engine)() as session:
        rows = list_results(session, ResultFilter())
    assert [r["image_id"] for r in rows] == [im["id"] for im in data.images]
    latest = [r for r in rows if r["image_id"] in rerun]
    assert [(r["label"], r["suspicion"], r["model_version"]) for r in latest] == \
        [("malignant", 10, "default:1.1.0")] * 5
    assert _ids(engine, ResultFilter(model_version="1.0.0", min_suspicion=10)) == [
        i for i in _expected(data, lambda im, p, s: p is not None and p["suspicion"] >= 10
                             and p["model_version_id"] == 1) if i not in rerun]


def test_pages_are_stable_and_cover_everything_once(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    everything = _ids(engine, ResultFilter(state="done"))
    pages = [_ids(engine, ResultFilter(state="done", limit=50, offset=o))
             for o in range(0, len(everything) + 50, 50)]
    assert all(len(p) == 50 for p in pages[:-2])
    assert [i for page in pages for i in page] == everything


def test_worklist_refreshes_timed_out_exams_and_sorts_by_suspicion(
        seeded: tuple[Engine, Seeded], tmp_path: Any) -> None:
    engine, data = seeded
    sessions = make_session_factory(engine)
    with sessions() as session:
        assert worklist_rows(session, WorklistFilter(), report_dir=tmp_path) == []
        # No watcher or worker ever refreshed these exams: the listing itself must.
        written = len(refresh_due_exams(session, timeout_s=60))
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        in_batch = worklist_rows(session, WorklistFilter(batch_id=3), report_dir=tmp_path)
    by_study = Counter(im["study_id"] for im in data.images if im["state"] == "queued")
    due = {s["study_uid"] for s in data.studies if not by_study.get(s["id"])}
    assert written == len(due) and {r["study_uid"] for r in rows} == due
    keys = [(r["suspicion"] or 0, r["p_malignant"] or 0.0) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    incomplete = [r for r in rows if r["status"] == "incomplete"]
    # Each says why: views missing (timed out) or views that arrived and failed.
    assert incomplete and all(any(f.startswith("incomplete: ") for f in r["flags"])
                              for r in incomplete)
    batch3 = {f"1.2.3.{im['study_id']}" for im in data.images if im["batch_id"] == 3}
    assert in_batch and {r["study_uid"] for r in in_batch} == batch3 & due


@pytest.fixture
def refreshed(seeded: tuple[Engine, Seeded]) -> Iterator[tuple[Session, Seeded]]:
    """A session on the seeded database, its due exams given their results."""
    engine, data = seeded
    with make_session_factory(engine)() as session:
        refresh_due_exams(session, timeout_s=60)
        yield session, data


def test_worklist_flags_images_in_flight_and_a_pdf_older_than_the_result(
        refreshed: tuple[Session, Seeded], tmp_path: Any) -> None:
    session, _ = refreshed
    top = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)[0]
    study = session.scalars(select(Study).where(Study.study_uid == top["study_uid"])).one()
    result = session.scalars(select(ExamResult).where(
        ExamResult.study_id == study.id, ExamResult.superseded_at.is_(None))).one()
    assert not any("still being processed" in f or "PDF" in f for f in top["flags"])
    # A late view of the exam is queued: its result may still change.
    late = session.scalars(select(Image).where(Image.study_id == study.id)).first()
    assert late is not None
    late.state = "queued"
    session.commit()
    pdf = exam_pdf_path(tmp_path, study.study_uid)
    pdf.parent.mkdir(parents=True)
    pdf.write_bytes(b"%PDF-1.4 written before the result")
    computed = as_utc(result.created_at)
    assert computed is not None
    before = (computed - timedelta(minutes=5)).timestamp()
    os.utime(pdf, (before, before))
    row = next(r for r in worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
               if r["study_uid"] == study.study_uid)
    assert "1 image(s) still being processed: this result may change" in row["flags"]
    assert any(f.startswith("the exam PDF predates this result") for f in row["flags"])
    assert row["report_path"] == str(pdf.resolve())
    after = (computed + timedelta(minutes=5)).timestamp()
    os.utime(pdf, (after, after))
    row = next(r for r in worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
               if r["study_uid"] == study.study_uid)
    assert not any(f.startswith("the exam PDF predates") for f in row["flags"])



def test_worklist_names_each_views_latest_prediction_only(
        refreshed: tuple[Session, Seeded], tmp_path: Any) -> None:
    """Every row's models and input-note flags come from its done views' latest predictions
    (highest id), not an older scoring's, also when a later model version scored the views
    again: a block of exams at a time, the latest picked per image."""
    session, data = refreshed
    session.add(ModelVersion(id=3, name="default", version="1.2.0", sha256="3" * 64,
                             preprocessing_version="2", classes=["normal", "benign", "malignant"],
                             input_size=[512, 512], path="/models/default/1.2.0"))
    session.flush()
    done = [im for im in data.images if im["state"] == "done"]
    # Every third exam scored again by 1.2.0 (a newer id); the older scoring had doubts.
    again = [im for im in done if im["study_id"] % 3 == 0]
    session.execute(update(Prediction).where(Prediction.image_id.in_(
        [im["id"] for im in again])).values(input_notes={"laterality": "older doubt"}))
    session.execute(insert(Prediction), [
        {**data.predictions[im["id"]], "id": 10_000 + im["id"], "model_version_id": 3,
         "input_notes": {"range": "newer note"} if im["view"] == "CC" else {}}
        for im in again])
    session.commit()
    latest = {im["id"]: 3 if im in again else data.predictions[im["id"]]["model_version_id"]
              for im in done}
    names = {1: "default:1.0.0", 2: "default:1.1.0", 3: "default:1.2.0"}
    expected = {}
    for im in done:
        expected.setdefault(f"1.2.3.{im['study_id']}", set()).add(names[latest[im["id"]]])
    rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
    assert rows and all(r["models"] == sorted(expected[r["study_uid"]]) for r in rows)
    rescored = [r for r in rows if int(r["study_uid"].rsplit(".", 1)[1]) % 3 == 0]
    assert rescored and all(r["models"] == ["default:1.2.0"] for r in rescored)
    flags = [f for r in rows for f in r["flags"]]
    assert not any("older doubt" in f for f in flags)
    noted = [f for r in rescored for f in r["flags"] if "read with notes" in f]
    cc_views = sum(im["view"] == "CC" for im in again
                   if f"1.2.3.{im['study_id']}" in {r["study_uid"] for r in rescored})
    assert len(noted) == cc_views and all(f.endswith("read with notes: newer note")
                                          for f in noted)

def test_batch_summary_says_how_many_exams_it_lists_and_counts_copies(
        refreshed: tuple[Session, Seeded], tmp_path: Any) -> None:
    session, data = refreshed
    summary = collect_batch_summary(session, 2, report_dir=tmp_path, worklist_limit=3)
    exams = len(worklist_rows(session, WorklistFilter(batch_id=2), report_dir=tmp_path))
    assert exams > 3 and summary.exams == exams and len(summary.worklist) == 3
    assert worklist_heading(summary) == (
        f"Read first: exams by suspicion (the first 3 of {exams})")
    assert ("exams with a result", exams) in overview_rows(summary)
    # A batch whose every file was a copy of a known image still says what it held.
    copies = Batch(name="copies only")
    session.add(copies)
    session.flush()
    session.add_all(DuplicateSubmission(batch_id=copies.id, image_id=im["id"],
                                        source=f"/again/{im['id']}.dcm")
                    for im in data.images[:4])
    session.commit()
    only_copies = collect_batch_summary(session, copies.id, report_dir=tmp_path)
    assert only_copies.total == 0 and only_copies.duplicates == 4
    assert only_copies.synthetic_images == 0 and summary.synthetic_images == 0
    assert "4 file(s) were copies of images already known" in no_worklist_text(only_copies)
    assert any(label.startswith("copies of images already known") and value == 4
               for label, value in overview_rows(only_copies))


def test_stats_match_the_seeded_rows(seeded: tuple[Engine, Seeded], tmp_path: Any) -> None:
    engine, data = seeded
    settings = Settings(database_url=str(engine.url), model=str(tmp_path / "no-model"),
                        _env_file=None)  # type: ignore[call-arg]
    with make_session_factory(engine)() as session:
        stats = collect_stats(session, settings, StatsFilter())
        batch1 = collect_stats(session, settings, StatsFilter(batch_id=1))
    preds = list(data.predictions.values())
    states = Counter(im["state"] for im in data.images)
    assert stats["totals"]["images"] == N_IMAGES
    assert stats["totals"]["done"] == states["done"] == stats["predictions"]
    assert stats["class_distribution"] == {
        c: sum(p["label"] == c for p in preds) for c in ("normal", "benign", "malignant")}
    mean_max = sum(max(p["p_normal"], p["p_benign"], p["p_malignant"]) for p in preds) / len(preds)
    assert stats["average_confidence"] == pytest.approx(mean_max, abs=1e-4)
    assert sum(stats["per_day"].values()) == len(preds)
    fails = Counter(im["error_code"] for im in data.images if im["state"] == "failed")
    assert {k: v["count"] for k, v in stats["failures_by_reason"].items()} == dict(fails)
    assert stats["failure_rate"] == pytest.approx(states["failed"] / N_IMAGES, abs=1e-4)
    assert stats["active_model"] is None  # no model at that path: said, not invented
    assert batch1["totals"]["images"] == sum(im["batch_id"] == 1 for im in data.images)


def test_cli_worklist_and_results_on_the_seeded_database(
        seeded: tuple[Engine, Seeded], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    engine, data = seeded
    for key in [k for k in os.environ if k.startswith("MAMMO_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("MAMMO_DATABASE_URL", url)
    runner = CliRunner()
    listed = runner.invoke(cli, ["worklist", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    # The exams left out (a view still queued) are counted, on stderr: stdout stays JSON.
    waiting = {im["study_id"] for im in data.images if im["state"] == "queued"}
    assert waiting and len(rows) + len(waiting) == len(data.studies)
    assert listed.stderr.startswith(f"{len(waiting)} exam(s) not listed: a view is still "
                                    "queued or processing (the oldest since ")
    assert rows and all({"study_uid", "suspicion", "per_breast", "flags",
                         "report_path"} <= set(r) for r in rows)
    scores = [r["suspicion"] or 0 for r in rows]
    assert scores == sorted(scores, reverse=True)
    one = runner.invoke(cli, ["results", "--patient", "pseudo-003", "--min-score", "2",
                              "--since", "2026-11-02", "--format", "json"])
    assert one.exit_code == 0, one.output
    expected = _expected(data, lambda im, p, s: s["patient_pseudonym"] == "pseudo-003"
                         and p is not None and p["suspicion"] >= 2
                         and im["created_at"] >= datetime(2026, 11, 2, tzinfo=UTC))
    assert [r["image_id"] for r in json.loads(one.output)] == expected
    paged = runner.invoke(cli, ["results", "--limit", "10", "--offset", "20"])
    assert paged.exit_code == 0 and "--offset 30" in paged.output
