"""The batch summary and the worklist at the size of a real night: what they show stays
readable however many images failed or exams there are, and says where the rest are."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.db.schema import Batch, Image, ModelVersion, Prediction
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_summary import write_summary
from tests.helpers.cli import invoke_cli, run_cli
from tests.helpers.seed_results import Seeded, seed_results

REPORT_ROWS = 50  # failed images a summary lists: as many as its read-first exams
_NO_KEY = "no_pseudonym_key"
_MODEL = {"id": 1, "name": "default", "version": "1.0.0", "sha256": "0" * 64,
          "preprocessing_version": "2", "classes": ["normal", "benign", "malignant"],
          "input_size": [512, 512], "path": "/models/default/1.0.0"}
_NO_KEY_MESSAGE = "PatientID present but MAMMO_PSEUDONYM_KEY is not set: set it and resubmit"


def _engine(url: str) -> Engine:
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    ensure_schema(engine)
    return engine


def _failed_night(engine: Engine, failed: int, unreadable: int) -> None:
    """Batch 1: ``failed`` images refused for want of the pseudonym key, ``unreadable`` more
    that could not be decoded."""
    at = datetime(2026, 11, 24, 22, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": at}])
        if failed + unreadable == 0:
            return
        conn.execute(insert(Image), [
            {"identity": f"night-{i}", "batch_id": 1, "source": f"/in/night/{i}.dcm",
             "format": "dicom", "state": "failed", "attempts": 1,
             "error_code": _NO_KEY if i < failed else "unreadable",
             "error_message": _NO_KEY_MESSAGE if i < failed else f"file {i}: not a DICOM file",
             "created_at": at, "finished_at": at + timedelta(seconds=1)}
            for i in range(failed + unreadable)])


def test_a_night_of_failures_is_counted_by_reason_not_listed_in_full(tmp_path: Path) -> None:
    engine = _engine(f"sqlite:///{tmp_path / 'night.db'}")
    _failed_night(engine, 300, 2)
    with Session(engine) as session:
        summary = collect_batch_summary(session, 1, report_dir=tmp_path)
    engine.dispose()
    html = write_summary(summary, tmp_path / "night.html", "html").read_text(encoding="utf-8")
    # One line per reason, with its count and one example...
    assert "<td>no_pseudonym_key</td><td>300</td>" in html
    assert "<td>unreadable</td><td>2</td><td>file 300: not a DICOM file</td>" in html
    # ...and the first failed images, not all of them: the rest are one command away. (Of
    # no exam, each is also a read-first row, flagged with its reason: the first 50 too.)
    assert html.count(_NO_KEY_MESSAGE) == REPORT_ROWS + 1 + REPORT_ROWS
    assert (f"The first {REPORT_ROWS} of 302 failed images; "
            "`mammo results --batch 1 --state failed` lists all.") in html
    assert "<h2>Failures (302)</h2>" in html
    pdf = write_summary(summary, tmp_path / "night.pdf", "pdf").read_bytes()
    # The failed images are listed in the Failures and read-first tables, the first 50 in
    # each: the PDF is as long for 300 of them as for 60.
    fewer = _engine(f"sqlite:///{tmp_path / 'fewer.db'}")
    _failed_night(fewer, 58, 2)
    with Session(fewer) as session:
        shorter = write_summary(collect_batch_summary(session, 1, report_dir=tmp_path),
                                tmp_path / "fewer.pdf", "pdf").read_bytes()
    fewer.dispose()
    pages = pdf.count(b"/Type /Page\n")
    assert pages == shorter.count(b"/Type /Page\n") <= 10, "the PDF lists every failed image"
    # The exports are data: every failed image stays in them.
    exported = json.loads(write_summary(summary, tmp_path / "night.json", "json").read_text())
    assert len(exported["failures"]) == len(exported["results"]) == 302
    assert exported["failure_reasons"][0] == {"error_code": _NO_KEY, "images": 300,
                                              "example": _NO_KEY_MESSAGE}


@pytest.mark.parametrize("failed", [0, 3])
def test_a_short_list_of_failures_is_shown_whole(failed: int, tmp_path: Path) -> None:
    engine = _engine(f"sqlite:///{tmp_path / 'night.db'}")
    _failed_night(engine, failed, 0)
    with Session(engine) as session:
        summary = collect_batch_summary(session, 1, report_dir=tmp_path)
    engine.dispose()
    html = write_summary(summary, tmp_path / "night.html", "html").read_text(encoding="utf-8")
    # The failures table, the reason's example, and each image's read-first row.
    assert html.count(_NO_KEY_MESSAGE) == (2 * failed + 1 if failed else 0)
    assert "lists all" not in html
    assert ("<p>None.</p>" in html) == (not failed)


def _scored_then_queued(engine: Engine, created: datetime, finished: list[datetime],
                        queued: int) -> None:
    """Batch 1: an image scored (2 s of work) at each of ``finished``, ``queued`` waiting."""
    with engine.begin() as conn:
        conn.execute(insert(ModelVersion), [_MODEL])
        conn.execute(insert(Batch), [{"id": 1, "name": "night", "created_at": created}])
        conn.execute(insert(Image), [
            {"identity": f"done-{i}", "batch_id": 1, "source": f"/in/{i}.png", "format": "png",
             "state": "done", "attempts": 1, "created_at": created,
             "claimed_at": at - timedelta(seconds=2), "finished_at": at}
            for i, at in enumerate(finished)])
        conn.execute(insert(Prediction), [
            {"image_id": i + 1, "model_version_id": 1, "preprocessing_version": "2",
             "label": "normal", "p_normal": 0.9, "p_benign": 0.05, "p_malignant": 0.05,
             "suspicion": 1, "decode_ms": 1000.0, "preprocess_ms": 500.0, "infer_ms": 500.0,
             "forward_pass_id": f"fp-{i}", "forward_pass_size": 1, "created_at": at}
            for i, at in enumerate(finished)])
        if queued:
            conn.execute(insert(Image), [
                {"identity": f"queued-{i}", "batch_id": 1, "source": f"/in/q{i}.png",
                 "format": "png", "state": "queued", "attempts": 0, "created_at": created}
                for i in range(queued)])


def _status_and_report_pace(url: str, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> tuple[float | None, float | None]:
    code, out = invoke_cli(["status", "1", "--format", "json"], monkeypatch, tmp_path,
                           database_url=url, report_dir=str(tmp_path / "reports"))
    assert code == 0, out
    engine = _engine(url)
    with Session(engine) as session:
        summary = collect_batch_summary(session, 1, report_dir=tmp_path)
    engine.dispose()
    return json.loads(out)[0]["images_per_minute"], summary.images_per_minute


def test_the_report_shows_the_pace_status_shows_for_a_stalled_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'stalled.db'}"
    created = datetime.now(UTC) - timedelta(minutes=15)
    # 10 images scored in its first 3 minutes, nothing in the 12 since, 5 still queued.
    engine = _engine(url)
    _scored_then_queued(engine, created,
                        [created + timedelta(seconds=60 + 12 * i) for i in range(10)], 5)
    engine.dispose()
    assert _status_and_report_pace(url, monkeypatch, tmp_path) == (0.0, 0.0)


def test_the_report_shows_the_pace_status_shows_for_a_long_finished_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'long.db'}"
    created = datetime(2026, 11, 24, 22, tzinfo=UTC)
    # An hour at one image a minute, then a faster last stretch: 30 images in 5 minutes.
    slow = [created + timedelta(minutes=1 + i) for i in range(60)]
    fast = [slow[-1] + timedelta(seconds=10 * (i + 1)) for i in range(30)]
    engine = _engine(url)
    _scored_then_queued(engine, created, slow + fast, 0)
    engine.dispose()
    status, report = _status_and_report_pace(url, monkeypatch, tmp_path)
    assert status is not None and status == report
    # Finished, it quotes its throughput over all its work (90 images in about 64 minutes),
    # not the last burst's pace (30 images in 5 minutes).
    assert status == pytest.approx(90 / 64, abs=0.05)


@pytest.fixture
def night_of_exams(tmp_path: Path) -> tuple[str, Seeded]:
    """400 seeded images, 100 exams; about 3% of the images still queued."""
    url = f"sqlite:///{tmp_path / 'exams.db'}"
    engine = _engine(url)
    data = seed_results(engine, 400, n_batches=2, seed=11)
    engine.dispose()
    return url, data


def _worklist(args: list[str], url: str, monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> Result:
    """`mammo worklist ARGS`, its stdout and stderr apart (invoke_cli joins them)."""
    result = run_cli(["worklist", *args], monkeypatch, tmp_path, database_url=url,
                     report_dir=str(tmp_path / "reports"))
    assert result.exit_code == 0, result.output
    return result


def _unlisted(data: Seeded) -> tuple[int, datetime]:
    """The exams with a view still queued (so no result yet), and the oldest such view."""
    queued = [im for im in data.images if im["state"] == "queued"]
    return len({im["study_id"] for im in queued}), min(im["created_at"] for im in queued)


def test_the_worklist_table_shows_a_page_and_says_how_to_see_the_rest(
        night_of_exams: tuple[str, Seeded], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    url, _ = night_of_exams
    monkeypatch.setattr("producer.cli.commands_report.TABLE_PAGE", 20)
    every = json.loads(_worklist(["--format", "json"], url, monkeypatch, tmp_path).stdout)
    assert len(every) > 20
    table = _worklist([], url, monkeypatch, tmp_path).stdout
    assert len(set(re.findall(r"1\.2\.3\.\d+", table))) == 20
    assert (f"the first 20 of {len(every)} exams: --limit N shows more, --format csv|json "
            "lists them all") in " ".join(table.split())
    assert len(_worklist(["--format", "csv"], url, monkeypatch, tmp_path)
               .stdout.splitlines()) == len(every) + 1
    limited = _worklist(["--limit", "30"], url, monkeypatch, tmp_path).stdout
    assert len(set(re.findall(r"1\.2\.3\.\d+", limited))) == 30
    assert f"the first 30 of {len(every)} exams (--limit 30)" in limited


def test_the_worklist_says_how_many_exams_wait_for_a_view_in_flight(
        night_of_exams: tuple[str, Seeded], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    url, data = night_of_exams
    exams, oldest = _unlisted(data)
    assert exams
    note = (f"{exams} exam(s) not listed: a view is still queued or processing (the oldest "
            f"since {oldest:%Y-%m-%d %H:%M} UTC); `mammo status` shows the queue, "
            "`mammo recover` sends stuck images again")
    table = _worklist([], url, monkeypatch, tmp_path)
    assert note in " ".join(table.stdout.split())
    # The JSON stays an array of exams: the note goes to stderr.
    listed = _worklist(["--format", "json"], url, monkeypatch, tmp_path)
    assert isinstance(json.loads(listed.stdout), list) and note in listed.stderr
    assert len(json.loads(listed.stdout)) + exams == len(data.studies)
    # Narrowed to a batch: only that batch's exams waiting are counted.
    in_batch = {im["study_id"] for im in data.images
                if im["state"] == "queued" and im["batch_id"] == 2}
    batch = _worklist(["--batch", "2", "--format", "csv"], url, monkeypatch, tmp_path)
    assert f"{len(in_batch)} exam(s) not listed" in batch.stderr
    code, out = invoke_cli(["report", "worklist", "--format", "json", "-o",
                            str(tmp_path / "w.json")], monkeypatch, tmp_path,
                           database_url=url, report_dir=str(tmp_path / "reports"))
    assert code == 0 and note in " ".join(out.split())
