"""The query and report commands on a small seeded database: what they print and write."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.db.schema import (
    Batch,
    DuplicateSubmission,
    Image,
    ModelVersion,
    Notification,
    Prediction,
    Study,
)
from shared.imaging.reader_version import READER_VERSION
from shared.queries import BATCH_STATUS_KEYS, ResultFilter, batch_status, list_results
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_outputs import write_batch_documents
from shared.reports.exports import DISCLAIMER
from tests.helpers.cli import invoke_cli, run_cli
from tests.helpers.seed_results import seed_results


def _engine(url: str) -> Engine:
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    ensure_schema(engine)
    return engine


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    """16 done images in 2 batches (batch 1: studies 1 and 3, batch 2: studies 2 and 4)."""
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = _engine(url)
    seed_results(engine, 16, n_batches=2, seed=3)
    engine.dispose()
    return url


def _mammo(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           url: str) -> tuple[int, str]:
    return invoke_cli(args, monkeypatch, tmp_path, database_url=url,
                      report_dir=str(tmp_path / "reports"))


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_formulas_in_the_data_are_text_in_every_csv(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Study).where(Study.id == 1).values(accession_number="=1+2"))
        conn.execute(update(Image).where(Image.id == 1).values(
            state="failed", error_code="unreadable",
            error_message='=HYPERLINK("http://x","y").dcm is not readable'))
        # Split at ";" by Excel in a German, French or Dutch locale; ESC would recolour a
        # terminal the CSV is printed to.
        conn.execute(update(Image).where(Image.id == 2).values(
            source="/in/\x1b[31ma;=2+5;.png"))
    engine.dispose()
    code, out = _mammo(["worklist", "--format", "csv"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "'=1+2" in {r["accession_number"] for r in _csv_rows(out)}
    code, out = _mammo(["results", "--format", "csv"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert _csv_rows(out)[0]["error_message"].startswith("'=HYPERLINK(")
    assert _csv_rows(out)[1]["source"] == "/in/\\x1b[31ma;'=2+5;.png" and "\x1b" not in out
    for args, key, expected in (
            (["report", "worklist", "--format", "csv"], "accession_number", "'=1+2"),
            (["report", "batch", "1", "--format", "csv"], "error_message", "'=HYPERLINK("),
            (["report", "batch", "1", "--format", "csv"], "source", "/in/\\x1b[31ma;'=2+5")):
        code, out = _mammo([*args, "-o", str(tmp_path / "x.csv")], monkeypatch, tmp_path,
                           seeded)
        assert code == ExitCode.OK, out
        written = _csv_rows((tmp_path / "x.csv").read_text(encoding="utf-8"))
        assert any(r[key].startswith(expected) for r in written), written


def _add_duplicates(url: str, batch_id: int, image_ids: list[int]) -> list[str]:
    engine = _engine(url)
    sources = [f"/again/copy-{i}.dcm" for i in image_ids]
    with engine.begin() as conn:
        conn.execute(insert(DuplicateSubmission), [
            {"batch_id": batch_id, "image_id": i, "source": s}
            for i, s in zip(image_ids, sources, strict=True)])
    engine.dispose()
    return sources


def test_the_results_table_lists_the_batch_s_repeated_files_like_csv_and_json(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sources = _add_duplicates(seeded, 1, [5, 6, 7])
    code, out = _mammo(["results", "--batch", "1", "--format", "json"], monkeypatch, tmp_path,
                       seeded)
    assert code == ExitCode.OK, out
    listed = json.loads(out)
    assert [r["source"] for r in listed if r["duplicate_of"]] == sources and len(listed) == 11
    code, out = _mammo(["results", "--batch", "1"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert all(s in out for s in sources) and "more rows follow" not in out
    # A table page ending inside the repeated files says where the rest are.
    monkeypatch.setattr("producer.cli.commands_query.TABLE_PAGE", 9)
    code, out = _mammo(["results", "--batch", "1"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert sources[0] in out and sources[1] not in out
    assert "more rows follow (files this batch sent again" in out and "--offset" not in out
    monkeypatch.setattr("producer.cli.commands_query.TABLE_PAGE", 5)
    code, out = _mammo(["results", "--batch", "1"], monkeypatch, tmp_path, seeded)
    assert sources[0] not in out and "add --offset 5 --limit 5, or use --format csv|json" in out


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_csv_or_json_page_points_to_the_next_page_only(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str) -> None:
    """Already CSV or JSON: the note must not send the reader to the format they use."""
    code, out = _mammo(["results", "--limit", "3", "--offset", "2", "--format", fmt],
                       monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "more rows follow: add --offset 5\n" in out and "--format" not in out


def test_a_copy_s_row_says_whose_failure_it_carries(seeded: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    reason = "scan-5.png is not a DICOM, PNG, JPEG, TIFF or PGM file."
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Image).where(Image.id == 5).values(
            source="/in/scan-5.png", state="failed", error_code="not_dicom_or_image",
            error_message=reason))
        # Batch 1 sends image 5's bytes again: under another name, and under its own path.
        conn.execute(insert(DuplicateSubmission), [
            {"batch_id": 1, "image_id": 5, "source": s}
            for s in ("/again/renamed.png", "/in/scan-5.png")])
    engine.dispose()
    code, out = _mammo(["report", "batch", "1", "--format", "csv", "-o",
                        str(tmp_path / "b.csv")], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    code, out = _mammo(["results", "--batch", "1", "--format", "json"], monkeypatch, tmp_path,
                       seeded)
    assert code == ExitCode.OK, out
    for rows in (_csv_rows((tmp_path / "b.csv").read_text(encoding="utf-8")), json.loads(out)):
        messages = {r["source"]: r["error_message"] for r in rows if r["duplicate_of"]}
        assert messages == {
            "/again/renamed.png": f"Already submitted as image 5 (/in/scan-5.png): {reason}",
            "/in/scan-5.png": reason}  # it names the row's own file already


def test_a_limit_caps_image_rows_and_repeated_files_together(seeded: str) -> None:
    _add_duplicates(seeded, 1, [5, 6, 7])
    engine = _engine(seeded)
    with Session(engine) as session:
        def ids(**kw: Any) -> list[tuple[int, int | None]]:
            flt = ResultFilter(batch_id=1, include_duplicates=True, **kw)
            return [(r["image_id"], r["duplicate_of"]) for r in list_results(session, flt)]

        everything = ids()
        assert ids(limit=10) == everything[:10] and len(everything) == 11
        assert ids(limit=8) == everything[:8] and ids(limit=20) == everything
        assert ids(offset=1) == [r for r in everything[1:] if r[1] is None]
    engine.dispose()


def test_every_report_file_or_its_command_carries_the_statement(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _mammo(["worklist", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    listed = json.loads(out)  # the listing stays the stable array
    assert isinstance(listed, list) and len(listed) == 4
    written = tmp_path / "w.json"
    code, out = _mammo(["report", "worklist", "--format", "json", "-o", str(written)],
                       monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    document = json.loads(written.read_text(encoding="utf-8"))
    assert document["disclaimer"] == DISCLAIMER
    assert document["models"] == ["default:1.0.0", "default:1.1.0"]  # seeded: both versions
    assert document["worklist"] == listed
    code, out = _mammo(["stats", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    printed = json.loads(out)
    assert printed["disclaimer"] == DISCLAIMER
    code, out = _mammo(["report", "stats", "--format", "json", "-o", str(tmp_path / "s.json")],
                       monkeypatch, tmp_path, seeded)
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == printed
    # A CSV file holds data rows only; the command says it when it writes one.
    for kind in ("worklist", "stats"):
        code, out = _mammo(["report", kind, "--format", "csv", "-o", str(tmp_path / "x.csv")],
                           monkeypatch, tmp_path, seeded)
        assert code == ExitCode.OK and DISCLAIMER in out, out
        assert DISCLAIMER not in (tmp_path / "x.csv").read_text(encoding="utf-8")


def test_write_reports_lists_the_pdfs_it_wrote_as_current(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _mammo(["worklist", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    uid = json.loads(out)[0]["study_uid"]
    old_pdf = tmp_path / "reports" / "exams" / f"exam-{uid}.pdf"
    old_pdf.parent.mkdir(parents=True)
    old_pdf.write_bytes(b"%PDF- an earlier result's report")
    os.utime(old_pdf, (0, 0))
    code, out = _mammo(["worklist", "--write-reports", "--format", "json"], monkeypatch,
                       tmp_path, seeded)
    assert code == ExitCode.OK, out
    rows = json.loads(out)
    assert all(r["report_path"] for r in rows)
    assert not [f for r in rows for f in r["flags"] if "predates" in f], rows


def test_the_worklist_csv_and_table_carry_the_patient_date_and_probability(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _mammo(["worklist", "--format", "json"], monkeypatch, tmp_path, seeded)
    listed = json.loads(out)
    code, out = _mammo(["worklist", "--format", "csv"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    rows = _csv_rows(out)
    for key in ("patient_pseudonym", "study_date", "p_malignant"):
        assert [r[key] for r in rows] == [str(j[key]) for j in listed], key
    code, out = _mammo(["worklist"], monkeypatch, tmp_path, seeded)
    assert listed[0]["patient_pseudonym"] in out and "p_malignant" in out


def test_run_s_batch_json_is_the_batch_report_s_json(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(database_url=seeded, broker_url=None,  # type: ignore[call-arg]
                        report_dir=tmp_path / "reports", _env_file=None)
    engine = _engine(seeded)
    with Session(engine) as session:
        written = write_batch_documents(session, 1, settings).exports
    engine.dispose()
    assert [p.name for p in written] == ["batch-1.json", "batch-1.csv"]
    from_run = json.loads(written[0].read_text(encoding="utf-8"))
    assert next(iter(from_run)) == "disclaimer" and from_run["disclaimer"] == DISCLAIMER
    code, out = _mammo(["report", "batch", "1", "--format", "json", "-o",
                        str(tmp_path / "b.json")], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert from_run == json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert from_run["models"] == ["default:1.0.0", "default:1.1.0"]


def test_report_messages_name_the_kind_and_the_right_option(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _mammo(["report", "exam", "1.2.3.1", "--format", "csv"], monkeypatch, tmp_path,
                       seeded)
    assert code == ExitCode.USAGE and "an exam report is written as pdf|json" in out, out
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    code, out = _mammo(["report", "stats", "--format", "csv", "-o", str(blocker / "s.csv")],
                       monkeypatch, tmp_path, seeded)
    assert code == ExitCode.CONFIG and "is a file, not a folder" in out, out
    assert "`mammo report -o FILE`" in out and "MAMMO_REPORT_DIR" in out
    assert "Give an --output, --report-dir" not in out


@pytest.mark.parametrize("args", [["report", "batch", "1", "--since", "2026-11-01"],
                                  ["report", "exam", "1.2.3.1", "--until", "2026-11-01"]])
def test_a_whole_report_refuses_a_time_range(args: list[str], seeded: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    code, out = _mammo(args, monkeypatch, tmp_path, seeded)
    assert code == ExitCode.USAGE, out
    assert "--since/--until narrow the worklist and stats reports only" in out
    assert not (tmp_path / "reports").exists()  # nothing written


@pytest.mark.parametrize("args", [["results"], ["worklist"], ["stats"],
                                  ["report", "worklist"], ["report", "stats"]])
@pytest.mark.parametrize(("since", "until"), [("2026-11-20", "2026-11-10"),
                                              ("2026-11-10", "2026-11-10")])
def test_an_empty_time_range_is_a_usage_error(args: list[str], since: str, until: str,
                                              seeded: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    code, out = _mammo([*args, "--since", since, "--until", until], monkeypatch, tmp_path,
                       seeded)
    assert code == ExitCode.USAGE, out
    assert f"--since {since} 00:00:00 is not before --until {until} 00:00:00" in out


def test_every_time_in_the_exam_json_is_iso_8601_utc(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = _mammo(["worklist", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out  # computes the exam results
    written = tmp_path / "exam.json"
    code, out = _mammo(["report", "exam", "1.2.3.1", "--format", "json", "-o", str(written)],
                       monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    report = json.loads(written.read_text(encoding="utf-8"))
    times = [report["exam"]["created_at"]] + [
        view[key] for view in report["views"]
        for key in ("submitted_at", "finished_at", "predicted_at")]
    assert len(times) == 13
    for text in times:
        assert text.endswith("+00:00") and "T" in text, text
        assert datetime.fromisoformat(text).utcoffset() == timedelta(0)


_MODEL = {"id": 1, "name": "default", "version": "1.0.0", "sha256": "0" * 64,
          "preprocessing_version": "2", "classes": ["normal", "benign", "malignant"],
          "input_size": [512, 512], "path": "/models/default/1.0.0"}
_STAGE_S = 2.0  # each seeded prediction's decode + preprocess + forward-pass time


def _scored(conn: Any, batch_id: int, finished: list[datetime], *, start: int = 0,
            model_id: int = 1) -> None:
    """Images of ``batch_id`` scored at ``finished``, each with its worker's prediction."""
    ids = conn.execute(insert(Image).returning(Image.id), [
        {"identity": f"pace-{batch_id}-{start + i}", "batch_id": batch_id,
         "source": f"/in/{batch_id}/{start + i}.png", "format": "png", "state": "done",
         "attempts": 1, "created_at": at - timedelta(minutes=1),
         "claimed_at": at - timedelta(seconds=_STAGE_S), "finished_at": at}
        for i, at in enumerate(finished)]).scalars().all()
    conn.execute(insert(Prediction), [
        {"image_id": image_id, "model_version_id": model_id, "preprocessing_version": "2",
         "label": "normal", "p_normal": 0.9, "p_benign": 0.05, "p_malignant": 0.05,
         "suspicion": 1, "decode_ms": 1000.0, "preprocess_ms": 500.0, "infer_ms": 500.0,
         "forward_pass_id": f"fp-{image_id}", "forward_pass_size": 1, "created_at": at}
        for image_id, at in zip(ids, finished, strict=True)])


def _batch_with_pace(url: str, created: datetime) -> None:
    """Batch 1: 10 images scored 1 to 3 minutes after ``created``, 5 still queued."""
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL])
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": created}])
        _scored(conn, 1, [created + timedelta(seconds=60 + 12 * i) for i in range(10)])
        conn.execute(insert(Image), [
            {"identity": f"pace-queued-{i}", "batch_id": 1, "source": f"/in/q{i}.png",
             "format": "png", "state": "queued", "attempts": 0, "created_at": created}
            for i in range(5)])
    engine.dispose()


def _status_of_batch_1(url: str, monkeypatch: pytest.MonkeyPatch,
                       tmp_path: Path) -> dict[str, Any]:
    code, out = _mammo(["status", "1", "--format", "json"], monkeypatch, tmp_path, url)
    assert code == ExitCode.OK, out
    [row] = json.loads(out)
    return dict(row)


def test_status_says_which_batches_are_urgent(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    # An urgent exam's batch was told from the night's routine one only by its name.
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == 2).values(priority="urgent"))
    engine.dispose()
    code, out = _mammo(["status", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    listing = out[out.index("\n[") + 1:]  # after the seed's mixed-model warnings (stderr)
    assert {row["batch_id"]: row["priority"] for row in json.loads(listing)} == {
        1: "routine", 2: "urgent"}
    code, out = _mammo(["status", "--format", "csv"], monkeypatch, tmp_path, seeded)
    table = out[out.index("batch_id,"):]
    assert {r["batch_id"]: r["priority"] for r in _csv_rows(table)} == {
        "1": "routine", "2": "urgent"}


def test_a_stalled_batch_has_no_pace_and_no_eta(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    created = datetime.now(UTC) - timedelta(minutes=15)  # last finish: 12 minutes ago
    _batch_with_pace(url, created)
    row = _status_of_batch_1(url, monkeypatch, tmp_path)
    assert set(row) == set(BATCH_STATUS_KEYS)
    assert (row["queued"], row["images_per_minute"], row["eta_s"]) == (5, 0.0, None)
    engine = _engine(url)
    with Session(engine) as session:
        # While it was working, 3.5 minutes in: 10 images since its first image began
        # (58 s in), 5 left.
        working = batch_status(session, 1, now=created + timedelta(minutes=3.5))
        done_later = batch_status(session, 1, now=created + timedelta(minutes=15))
    engine.dispose()
    assert working is not None and done_later is not None
    assert working.images_per_minute == pytest.approx(10 / 152 * 60)
    assert working.as_row()["eta_s"] == round(5 / (10 / 152 * 60) * 60)
    assert (done_later.images_per_minute, done_later.eta_seconds) == (0.0, None)


def test_time_a_batch_waited_behind_others_is_not_counted_as_slow_work(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    created = datetime.now(UTC) - timedelta(minutes=20)
    started = created + timedelta(minutes=18)  # it waited 18 minutes for a worker
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL])
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": created}])
        _scored(conn, 1, [started + timedelta(seconds=_STAGE_S + 12 * i) for i in range(10)])
        conn.execute(insert(Image), [
            {"identity": f"q{i}", "batch_id": 1, "source": f"/in/q{i}.png", "format": "png",
             "state": "queued", "attempts": 0, "created_at": created} for i in range(5)])
    with Session(engine) as session:
        status = batch_status(session, 1, now=started + timedelta(minutes=2))
    engine.dispose()
    # 10 images in the 2 minutes since its first image began: 5 a minute, so 60 s for the
    # last 5 (counting from creation's side of the window, 2 a minute and 150 s).
    assert status is not None and status.images_per_minute == pytest.approx(5.0)
    assert status.eta_seconds == pytest.approx(60)


def test_a_finished_batch_keeps_the_pace_it_ended_at(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    created = datetime.now(UTC) - timedelta(days=1)
    _batch_with_pace(url, created)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(update(Image).where(Image.state == "queued").values(
            state="failed", error_code="unreadable", finished_at=created + timedelta(minutes=4)))
    with Session(engine) as session:
        status = batch_status(session, 1)
    engine.dispose()
    # From its first image's start (58 s) to its last scored image (168 s): 10 images. The
    # 5 refused later were never scored: they are no part of its pace.
    assert status is not None and status.eta_seconds == 0.0
    assert status.images_per_minute == pytest.approx(10 / 110 * 60)


def _paces(url: str, batch_id: int, tmp_path: Path) -> tuple[float | None, float | None]:
    """(`mammo status`'s images/minute, the batch summary's) for a finished batch."""
    engine = _engine(url)
    with Session(engine) as session:
        status = batch_status(session, batch_id)
        summary = collect_batch_summary(session, batch_id, report_dir=tmp_path)
    engine.dispose()
    assert status is not None
    return status.images_per_minute, summary.images_per_minute


def test_a_batch_s_pace_counts_only_what_it_scored_itself_and_survives_a_rescore(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    old = datetime(2026, 11, 1, tzinfo=UTC)
    later = old + timedelta(days=1)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL, {**_MODEL, "id": 2, "version": "1.7.0",
                                                     "sha256": "7" * 64}])
        conn.execute(insert(Batch), [{"id": 1, "created_at": old},
                                     {"id": 2, "created_at": later}])
        _scored(conn, 1, [old + timedelta(seconds=10)])
        # Batch 2 scores 2 images in 4 s (2 s each, one after the other) and sends a copy
        # of batch 1's image, scored a day before.
        _scored(conn, 2, [later + timedelta(seconds=s) for s in (2, 4)], start=1)
        conn.execute(insert(DuplicateSubmission), [
            {"batch_id": 2, "image_id": 1, "source": "/again/copy.png"}])
    assert _paces(url, 2, tmp_path) == (pytest.approx(30.0), 30.0)
    # `mammo rescore --batch 2` a week later: its images are scored again by 1.7.0, and
    # their claim and finish times rewritten.
    rescored = later + timedelta(days=7)
    with engine.begin() as conn:
        conn.execute(update(Image).where(Image.batch_id == 2).values(
            claimed_at=rescored, finished_at=rescored + timedelta(seconds=1)))
        first = conn.execute(select(Prediction.__table__).join(
            Image, Image.id == Prediction.image_id).where(Image.batch_id == 2)).mappings().all()
        conn.execute(insert(Prediction), [
            {**{k: v for k, v in row.items() if k != "id"}, "model_version_id": 2,
             "created_at": rescored + timedelta(seconds=1)} for row in first])
    engine.dispose()
    assert _paces(url, 2, tmp_path) == (pytest.approx(30.0), 30.0)


def test_a_batch_of_one_forward_pass_counts_every_image_s_preparation(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one-pass.db'}"
    at = datetime(2026, 11, 1, tzinfo=UTC)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL])
        conn.execute(insert(Batch), [{"id": 1, "created_at": at}])
        _scored(conn, 1, [at] * 4)
        # One chunk: 4 images decoded and preprocessed (1.5 s each), then one forward pass
        # of 4 (0.5 s per image): 8 s of work for the 4 predictions written together.
        conn.execute(update(Prediction).values(forward_pass_id="fp-chunk", forward_pass_size=4))
    engine.dispose()
    assert _paces(url, 1, tmp_path) == (pytest.approx(30.0), 30.0)


def test_a_batch_scored_by_two_models_is_flagged_by_status(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    at = datetime(2026, 11, 1, tzinfo=UTC)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL, {**_MODEL, "id": 2, "version": "1.7.0",
                                                     "sha256": "7" * 64}])
        conn.execute(insert(Batch), [{"id": 1, "created_at": at}, {"id": 2, "created_at": at}])
        # Two workers with different MAMMO_MODEL shared batch 1; batch 2 had one model.
        _scored(conn, 1, [at + timedelta(seconds=s) for s in (2, 4)])
        _scored(conn, 1, [at + timedelta(seconds=6)], start=2, model_id=2)
        _scored(conn, 2, [at + timedelta(seconds=8)])
    with Session(engine) as session:
        mixed, single = batch_status(session, 1), batch_status(session, 2)
    engine.dispose()
    assert mixed is not None and mixed.models == {"default:1.0.0": 2, "default:1.7.0": 1}
    assert mixed.as_row()["models"] == "default:1.0.0 x 2, default:1.7.0 x 1"
    assert single is not None and single.as_row()["models"] == "default:1.0.0"
    assert single.mixed_models_warning is None
    code, out = _mammo(["status", "1"], monkeypatch, tmp_path, url)
    assert code == 0
    assert "batch 1 was scored by 2 model versions" in " ".join(out.split())
    assert "mammo rescore --batch 1" in " ".join(out.split())


def test_two_models_under_one_name_and_version_are_told_apart(tmp_path: Path) -> None:
    """`mammo train`'s defaults name a retrained model like the shipped one."""
    url = f"sqlite:///{tmp_path / 'retrained.db'}"
    at = datetime(2026, 11, 1, tzinfo=UTC)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL, {**_MODEL, "id": 2, "sha256": "f" * 64}])
        conn.execute(insert(Batch), [{"id": 1, "created_at": at}])
        _scored(conn, 1, [at + timedelta(seconds=2)])
        _scored(conn, 1, [at + timedelta(seconds=4)], start=1, model_id=2)
    with Session(engine) as session:
        status = batch_status(session, 1)
    engine.dispose()
    assert status is not None and status.models == {
        "default:1.0.0 (sha256 000000000000)": 1, "default:1.0.0 (sha256 ffffffffffff)": 1}
    assert status.mixed_models_warning is not None


@pytest.mark.parametrize("kind", ["refused at intake", "copies only"])
def test_a_batch_that_scored_nothing_has_no_pace(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    old = datetime(2026, 11, 1, tzinfo=UTC)
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL])
        conn.execute(insert(Batch), [{"id": 1, "created_at": old},
                                     {"id": 2, "created_at": old + timedelta(days=1)}])
        _scored(conn, 1, [old + timedelta(seconds=s) for s in (10, 12)])
        if kind == "copies only":
            conn.execute(insert(DuplicateSubmission), [
                {"batch_id": 2, "image_id": i, "source": f"/again/{i}.png"} for i in (1, 2)])
        else:  # intake stamps a refused file finished at once, a millisecond after creation
            conn.execute(insert(Image), [
                {"identity": "refused", "batch_id": 2, "source": "/in/bad.png",
                 "format": "png", "state": "failed", "error_code": "unreadable",
                 "attempts": 0, "created_at": old + timedelta(days=1),
                 "finished_at": old + timedelta(days=1, milliseconds=1)}])
    engine.dispose()
    assert _paces(url, 2, tmp_path) == (None, None)


def test_status_counts_notifications_still_owed(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """A batch e-mail that failed shows in `status`, not only in a worker's log; one
    ``pending`` (being sent, or left by a worker stopped mid-send: `status` cannot tell) is
    counted apart, no longer left out; one past the give-up window (never sent again) is not
    owed."""
    now = datetime.now(UTC)
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(insert(Notification), [
            {"channel": "email", "event": "batch_complete", "subject_key": "batch:1",
             "batch_id": 1, "status": "failed", "attempts": 3, "created_at": now,
             "claimed_at": now, "last_error": "ConnectionRefusedError"},
            {"channel": "webhook", "event": "batch_complete", "subject_key": "batch:1",
             "batch_id": 1, "status": "pending", "attempts": 0, "created_at": now,
             "claimed_at": now, "last_error": None},
            {"channel": "email", "event": "batch_complete", "subject_key": "batch:2",
             "batch_id": 2, "status": "failed", "attempts": 3,
             "created_at": now - timedelta(days=2), "claimed_at": now - timedelta(days=2),
             "last_error": "ConnectionRefusedError"}])
    engine.dispose()
    code, out = _mammo(["status", "--health", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    health = json.loads(out)[0]
    assert (health["notifications_undelivered"], health["notifications_pending"]) == (1, 1)
    code, out = _mammo(["status"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "notifications undelivered: 1\n" in out and "`mammo recover`" in out
    assert "notifications pending: 1\n" in out and "left by a worker stopped mid-send" in out


def test_the_results_table_names_each_rows_model(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """After an activation, old and new scores sit in one listing: the default table must
    say which model gave each, not only CSV and JSON."""
    code, out = _mammo(["results", "--limit", "16"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "model_version" in out and "default:" in out


def test_status_health_exits_8_when_the_broker_is_unreachable(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A monitoring job reads the exit code; the row is still printed for the person."""
    code, out = invoke_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                           database_url=seeded, broker_url="redis://127.0.0.1:1/0")
    assert code == ExitCode.BROKER_UNAVAILABLE, out
    assert json.loads(out)[0]["broker"] == "UNREACHABLE"
    code, out = _mammo(["status", "--health", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK and json.loads(out)[0]["broker"] == "embedded (no broker)"


def test_times_with_an_offset_are_converted_to_utc(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    def ids(since: str) -> list[int]:
        code, out = _mammo(["results", "--since", since, "--format", "json"], monkeypatch,
                           tmp_path, seeded)
        assert code == ExitCode.OK, out
        return [r["image_id"] for r in json.loads(out)]

    engine = _engine(seeded)
    with engine.connect() as conn:
        times = sorted(conn.execute(select(Image.created_at)).scalars())
    engine.dispose()
    middle = times[len(times) // 2].replace(tzinfo=None, microsecond=0)
    later = ids(middle.isoformat())
    assert 0 < len(later) < len(ids("2000-01-01"))
    # The same instant with Z, and as a local time with its offset, selects the same rows.
    plus_one = (middle + timedelta(hours=1)).isoformat() + "+01:00"
    assert ids(middle.isoformat() + "Z") == later and ids(plus_one) == later
    code, out = _mammo(["results", "--since", "yesterday"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.USAGE and "is not an ISO 8601 date or time" in out


def test_status_names_the_models_each_worker_scored_with(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """After an activation, running workers keep their old model: status must show it."""
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Prediction).values(created_at=datetime.now(UTC), worker="celery@a",
                                               reader_version=READER_VERSION))
        conn.execute(update(Prediction).where(Prediction.model_version_id == 2)
                     .where(Prediction.image_id > 8).values(worker="celery@b"))
    engine.dispose()
    code, out = _mammo(["status", "--health", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    seen = json.loads(out)[0]["workers_scored_10min"]
    assert "celery@a (" in seen and ", default:1.0.0 + default:1.1.0)" in seen, seen
    assert seen.endswith(", default:1.1.0)") and "celery@b (" in seen, seen


def test_status_shows_claims_a_dead_worker_left_before_their_lease_ends(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Right after a whole worker is killed its images sit `processing`, not yet stale:
    status says so, and from when the sweeper re-sends them."""
    claimed = datetime.now(UTC) - timedelta(seconds=80)  # heartbeat 30 s, lease 120 s
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Image).where(Image.id.in_([1, 2])).values(
            state="processing", claim_token="dead-worker", claimed_at=claimed))
        conn.execute(update(Image).where(Image.id == 3).values(
            state="processing", claim_token="live-worker", claimed_at=datetime.now(UTC)))
    engine.dispose()
    code, out = _mammo(["status", "--health", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    health = json.loads(out)[0]
    assert (health["stale_claims"], health["unrenewed_claims"]) == (0, 2)
    resent = datetime.fromisoformat(health["unrenewed_resent_from"])
    assert abs((resent - (claimed + timedelta(seconds=120))).total_seconds()) < 1


def _spot_view(url: str) -> int:
    """Study 1.2.3.1's first image made a spot-compression view the watcher moved."""
    engine = _engine(url)
    with engine.begin() as conn:
        image_id = conn.execute(select(Image.id).join(Study, Study.id == Image.study_id)
                                .where(Study.study_uid == "1.2.3.1")
                                .order_by(Image.id)).scalars().first()
        conn.execute(update(Image).where(Image.id == image_id).values(
            view_flags="spot_compression", archived_path="/in/processed/Doe_Jane_LCC.dcm"))
    engine.dispose()
    assert image_id is not None
    return int(image_id)


def _exam_report(fmt: str, seeded: str, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> Path:
    written = tmp_path / f"exam.{fmt}"
    code, out = _mammo(["report", "exam", "1.2.3.1", "--format", fmt, "-o", str(written)],
                       monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    return written


def test_the_exam_json_tells_a_spot_view_and_keeps_file_paths_out(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spot = _spot_view(seeded)
    text = _exam_report("json", seeded, monkeypatch, tmp_path).read_text(encoding="utf-8")
    views = {v["image_id"]: v for v in json.loads(text)["views"]}
    assert views[spot]["view_flags"] == "spot_compression"
    assert "Doe_Jane" not in text and "archived_path" not in text


@pytest.mark.skipif(not shutil.which("pdftotext"),
                    reason="poppler-utils (pdftotext) is not installed")
def test_the_exam_pdf_titles_a_spot_view_as_such(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spot = _spot_view(seeded)
    written = _exam_report("pdf", seeded, monkeypatch, tmp_path)
    text = subprocess.run(["pdftotext", str(written), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert f"(spot compression) (image {spot})" in " ".join(text.split()), text
    # The seeded hashes are all digits, the widest a sha256 can print: still on one line.
    assert f"{0:064d}" in text.split() or f"{1:064d}" in text.split(), text


def test_no_eta_for_a_batch_whose_work_nobody_holds_now(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed mid-batch left a pace of a minute ago: no ETA from it once no claim of
    the batch is renewed (two heartbeats: 60 s) and nothing finished since."""
    url = f"sqlite:///{tmp_path / 'pace.db'}"
    created = datetime.now(UTC) - timedelta(minutes=4)  # last finish: 72 s ago
    _batch_with_pace(url, created)
    row = _status_of_batch_1(url, monkeypatch, tmp_path)
    assert row["images_per_minute"] > 0  # the pace it kept over the last 5 minutes
    assert (row["queued"], row["eta_s"]) == (5, None)
    engine = _engine(url)
    with engine.begin() as conn:  # a live worker's claim on one of the 5
        conn.execute(update(Image).where(Image.state == "queued").where(
            Image.identity == "pace-queued-0").values(
            state="processing", claim_token="live", claimed_at=datetime.now(UTC)))
    engine.dispose()
    row = _status_of_batch_1(url, monkeypatch, tmp_path)
    assert row["eta_s"] is not None and row["eta_s"] > 0


def test_status_counts_a_batch_of_copies_as_its_report_does_and_says_so(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(insert(Batch), [{"id": 3, "name": "again"}])
        conn.execute(insert(DuplicateSubmission), [
            {"batch_id": 3, "image_id": i, "source": f"/again/{i}.png"} for i in range(1, 5)])
    engine.dispose()
    code, out = _mammo(["status", "3", "--format", "json"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    [row] = json.loads(out)
    assert (row["total"], row["copies"], row["done"]) == (0, 4, 4)
    code, out = _mammo(["status", "3"], monkeypatch, tmp_path, seeded)
    assert "copies: files a batch sent again that were already known" in out
    assert "not in its total" in out


def test_status_names_the_active_model_and_the_workers_still_on_another(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        tiny_model_dir: Path) -> None:
    """After `mammo models activate`, status said nothing of the active model, and a worker
    still scoring with the old one showed only as a model name in a list."""
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Prediction).values(created_at=datetime.now(UTC), worker="celery@a",
                                               reader_version=READER_VERSION))
    engine.dispose()
    code, out = _mammo(["models", "activate", str(tiny_model_dir)], monkeypatch, tmp_path,
                       seeded)
    assert code == ExitCode.OK, out
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=seeded, report_dir=str(tmp_path / "reports"))
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert health["model_active"] == "tiny-test-model:0.0.1"
    assert health["workers_on_other_models"] == "celery@a"
    assert "warning: celery@a scored in the last 10 minutes with another model" in " ".join(
        result.stderr.split())
    code, out = _mammo(["status"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "model active: tiny-test-model:0.0.1" in out
    assert ("warning: celery@a scored in the last 10 minutes with another model than the "
            "active tiny-test-model:0.0.1") in " ".join(out.split())


def test_status_names_the_workers_of_an_earlier_release_still_scoring(
        seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An earlier release's worker left running after `mammo db upgrade` scores on the
    migrated database (no reader version, the earlier label rule): status said nothing."""
    engine = _engine(seeded)
    with engine.begin() as conn:  # celery@new: this release; celery@old: no reader version
        conn.execute(update(Prediction).values(created_at=datetime.now(UTC),
                                               worker="celery@new",
                                               reader_version=READER_VERSION))
        conn.execute(update(Prediction).where(Prediction.image_id <= 4)
                     .values(worker="celery@old", reader_version=None))
        # The release just before this one: it names its readers, an earlier version (it
        # read upside-down DICOMs as stored); status said nothing of it either.
        conn.execute(update(Prediction).where(Prediction.image_id.in_((7, 8)))
                     .values(worker="celery@prev", reader_version="2"))
        # An earlier release's prediction of last month: scored before the upgrade.
        conn.execute(update(Prediction).where(Prediction.image_id.in_((5, 6)))
                     .values(worker="celery@gone", reader_version=None,
                             created_at=datetime.now(UTC) - timedelta(days=30)))
    engine.dispose()
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=seeded, report_dir=str(tmp_path / "reports"))
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)[0]["workers_of_earlier_releases"] == (
        "celery@old, celery@prev")
    warning = " ".join(result.stderr.split())
    assert ("warning: celery@old, celery@prev scored in the last 10 minutes as another "
            f"release (a reader version other than this release's {READER_VERSION}, or "
            "none): that release's worker is still running against this database and must "
            "be stopped and upgraded") in warning, warning
    code, out = _mammo(["status"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "workers of earlier releases: celery@old, celery@prev\n" in out
    assert "warning: celery@old, celery@prev scored in the last 10 minutes as another " \
        "release" in " ".join(out.split())

    engine = _engine(seeded)
    with engine.begin() as conn:  # upgraded: every worker names its readers
        conn.execute(update(Prediction).where(Prediction.image_id <= 8)
                     .values(reader_version=READER_VERSION))
    engine.dispose()
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=seeded, report_dir=str(tmp_path / "reports"))
    assert json.loads(result.stdout)[0]["workers_of_earlier_releases"] == ""
    assert "another release" not in result.stderr
