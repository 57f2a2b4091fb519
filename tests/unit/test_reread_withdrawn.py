"""`mammo rescore --reread` of a file this release's readers refuse: the image turns failed
with the reader's reason, and its earlier result, an earlier release's reading, is withdrawn.

Found (rereadfix): an earlier release read a DICOM whose Bits Stored understates its values
(masked to a banded image and scored); this release refuses it as `unreadable`. The re-read
kept the image done with the earlier release's score: `mammo results`, the worklist and the
exam result went on showing a score this release would not give, and the rescore said only
"could not be scored again and keeps its earlier result". Now it fails as a first reading
would; the prediction stays in the table as history. Anything else (the file gone or
replaced, the model failing, a database or broker outage) withdraws nothing.

Also: on SQLite a re-read replacing the newest predictions gave the new rows the deleted
rows' ids again (SQLite's max(id) + 1), so the exam result's signature (over prediction ids)
came back unchanged and the exam kept the result computed from the earlier reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import ExamResult, Image, Prediction
from shared.enums import ErrorCode, Priority
from shared.errors import DatabaseUnavailableError, UnreadableImageError
from shared.imaging.reader_version import READER_VERSION
from shared.imaging.readers import decode
from shared.rescoring import REFUSED_FOR_ITS_CONTENT, withdraws_earlier_result
from shared.synthetic import make_exam_set
from tests.helpers.cli import Mammo, invoke_cli, mammo_on
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

KEY = "reread-withdrawn-key-0123456789ab"


def _understated(path: Path) -> str:
    """Rewrite ``path``'s header to say Bits Stored 10 over its 12-bit values (the same
    pixel bytes and SOP Instance UID: the registered image, as an earlier release read it),
    and return the message this release's reader refuses it with."""
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 10, 9
    ds.save_as(path)
    with pytest.raises(UnreadableImageError) as caught:
        decode(path, max_pixels=10**8)
    assert "the header understates the bit depth" in caught.value.message
    return caught.value.message


def _rows(url: str, stmt: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(stmt).all()]
    finally:
        engine.dispose()


def _predictions(url: str) -> list[tuple[Any, ...]]:
    return _rows(url, select(Prediction.id, Prediction.image_id, Prediction.reader_version,
                             Prediction.label, Prediction.suspicion).order_by(Prediction.id))


def _exam_results(url: str) -> list[tuple[Any, ...]]:
    return _rows(url, select(ExamResult.version, ExamResult.status, ExamResult.label,
                             ExamResult.suspicion, ExamResult.n_failed)
                 .order_by(ExamResult.version))


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, url: str,
         ) -> Mammo:
    """One exam run by this release through the embedded worker; ``mammo`` on it."""
    make_exam_set(tmp_path / "in", n_exams=1, seed=71)
    mammo = mammo_on(monkeypatch, tmp_path, database_url=url, model=str(model_dir),
                     patient_id_key=KEY, report_dir=str(tmp_path / "reports"))
    code, out = mammo("run", str(tmp_path / "in"))
    assert code == ExitCode.OK, out
    return mammo


def _as_an_earlier_release_left(url: str, image_ids: list[int], **values: Any) -> None:
    """Their predictions as an earlier release wrote them: no reader version (and
    ``values``: what its reading scored)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Prediction).where(Prediction.image_id.in_(image_ids))
                     .values(reader_version=None, **values))
    engine.dispose()


def _source(url: str, image_id: int) -> Path:
    [(source,)] = _rows(url, select(Image.source).where(Image.id == image_id))
    return Path(source)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_reread_this_release_refuses_fails_the_image_and_withdraws_its_result(
        backend: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    mammo = _run(tmp_path, monkeypatch, tiny_model_dir, url)
    _as_an_earlier_release_left(url, [1, 2])
    refusal = _understated(_source(url, 1))
    before = _predictions(url)
    [(_, study_before, *_)] = _exam_results(url)

    code, out = mammo("rescore", "--reread", "--batch", "1")
    assert code == ExitCode.IMAGES_FAILED, out
    assert ("processed 2 re-scored image(s) with the embedded worker; 1 now failed: this "
            "release's readers refuse its file, which an earlier release read and scored; "
            "that result is withdrawn") in out, out
    assert "keeps its earlier result" not in out, out

    # Failed with the reader's own code and message, as a first reading leaves it.
    code, out = mammo("results", "--batch", "1", "--format", "json")
    assert code == ExitCode.OK, out
    rows = {r["image_id"]: r for r in json.loads(out)}
    assert (rows[1]["state"], rows[1]["error_code"], rows[1]["error_message"]) == (
        "failed", "unreadable", refusal)
    assert all(rows[1][key] is None for key in ("label", "suspicion", "p_malignant",
                                                "model_version")), rows[1]
    assert all(rows[i]["state"] == "done" and rows[i]["label"] for i in (2, 3, 4)), rows
    code, out = mammo("results", "--batch", "1", "--label", rows[2]["label"],
                      "--format", "json")
    assert 1 not in {r["image_id"] for r in json.loads(out)}, out
    # The earlier prediction stays as history; image 2's was replaced by its re-reading.
    after = _predictions(url)
    assert [p for p in after if p[1] == 1] == [p for p in before if p[1] == 1]
    assert {p[2] for p in after if p[1] != 1} == {READER_VERSION}
    # The exam result is recomputed without the withdrawn view.
    results = _exam_results(url)
    assert study_before == "complete" and len(results) == 2, results
    assert results[-1][1] == "incomplete" and results[-1][4] == 1, results
    code, out = mammo("worklist", "--format", "json")
    assert code == ExitCode.OK, out
    [exam] = json.loads(out)
    assert exam["status"] == "incomplete", exam
    assert "incomplete: L-CC failed, not scored" in exam["flags"], exam
    code, out = mammo("report", "image", "1", "--format", "json", "-o",
                      str(tmp_path / "image-1.json"))
    assert code == ExitCode.OK, out
    view = json.loads((tmp_path / "image-1.json").read_text())["view"]
    assert (view["state"], view["error_message"], view["label"], view["suspicion"],
            view["heatmap"]) == ("failed", refusal, None, None, False), view
    # Nothing left to re-read: a failed image is no done image to re-score.
    code, out = mammo("rescore", "--reread", "--batch", "1", "--dry-run")
    assert code == ExitCode.OK and "0 done image(s)" in out, out


def test_a_reread_of_every_view_recomputes_the_exam_result(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: the re-read predictions of the newest rows get new ids, not the deleted ones'
    again, so the exam result's signature changes and it is recomputed from them."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    mammo = _run(tmp_path, monkeypatch, tiny_model_dir, url)
    [fresh] = _exam_results(url)
    first = _predictions(url)
    # The earlier release's reading of all four views scored them malignant, and its exam
    # result said so.
    _as_an_earlier_release_left(url, [1, 2, 3, 4], label="malignant", p_malignant=0.97,
                                p_benign=0.02, p_normal=0.01, suspicion=10)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(ExamResult).values(label="malignant", suspicion=8))
    engine.dispose()

    code, out = mammo("rescore", "--reread", "--batch", "1")
    assert code == ExitCode.OK and "processed 4 re-scored image(s)" in out, out
    results = _exam_results(url)
    assert len(results) == 2 and results[-1][1:] == fresh[1:], results
    code, out = mammo("worklist", "--format", "json")
    [exam] = json.loads(out)
    assert (exam["label"], exam["exam_suspicion"]) == (fresh[2], fresh[3]), exam
    again = _predictions(url)
    assert min(p[0] for p in again) > max(p[0] for p in first), again
    assert [p[1:] for p in again] == [p[1:] for p in first]  # the same reading as the run's


def test_a_broker_away_at_a_reread_withdraws_nothing(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _run(tmp_path, monkeypatch, tiny_model_dir, url)
    _as_an_earlier_release_left(url, [1, 2])
    _understated(_source(url, 1))
    before = _predictions(url), _rows(url, select(Image.id, Image.state))
    code, out = invoke_cli(["rescore", "--reread", "--batch", "1"], monkeypatch, tmp_path,
                           database_url=url, model=str(tiny_model_dir), patient_id_key=KEY,
                           broker_url="redis://127.0.0.1:1/0")
    assert code == ExitCode.BROKER_UNAVAILABLE, out
    assert (_predictions(url), _rows(url, select(Image.id, Image.state))) == before


# --- the worker's rule, on the chunk pipeline itself ----------------------------------------

def test_only_a_refusal_of_the_files_content_withdraws_and_only_an_earlier_readers_result(
        ) -> None:
    content = {ErrorCode.UNREADABLE, ErrorCode.TRUNCATED, ErrorCode.NOT_DICOM_OR_IMAGE,
               ErrorCode.NOT_MAMMOGRAPHY, ErrorCode.FOR_PROCESSING, ErrorCode.EMPTY_IMAGE,
               ErrorCode.UNEXPECTED_CHANNELS, ErrorCode.MISSING_PIXEL_DATA}
    assert content == REFUSED_FOR_ITS_CONTENT
    for code in ErrorCode:
        # This release's own reading of a file damaged since: kept (a plain rescore).
        assert not withdraws_earlier_result(code, READER_VERSION)
        for earlier in (None, "1"):
            assert withdraws_earlier_result(code, earlier) is (code in REFUSED_FOR_ITS_CONTENT)


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _aged_and_reopened(settings: Settings, sessions: sessionmaker[Session],
                       tmp_path: Path) -> tuple[list[int], list[Path], str]:
    """An exam scored, its predictions an earlier release's, its LCC's header one this
    release refuses, the four re-opened as `mammo rescore --reread` does: (ids, files,
    the refusal)."""
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=73)
    ids = register_files(sessions, batch, files).new_ids
    assert process_chunk(ids, token="first", runtime=WorkerRuntime(settings)).done == 4
    _as_an_earlier_release_left(settings.database_url, ids)
    refusal = _understated(files[0])
    with sessions() as session:
        assert lifecycle.reopen(session, ids) == sorted(ids)
        session.commit()
    return ids, files, refusal


def _states(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(
            select(Image.id, Image.state, Image.error_code).order_by(Image.id)).all()]


def test_a_database_outage_at_the_save_withdraws_nothing_and_the_retry_does(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids, _, refusal = _aged_and_reopened(settings, sessions, tmp_path)
    before = _predictions(settings.database_url)
    runtime = WorkerRuntime(settings)
    real = lifecycle.mark_failed

    def away(*args: object, **kwargs: object) -> bool:
        raise OperationalError("UPDATE images", {}, Exception("connection refused"))

    monkeypatch.setattr(lifecycle, "mark_failed", away)
    with pytest.raises(DatabaseUnavailableError, match="connection refused"):
        process_chunk(ids, token="reread", runtime=runtime)
    assert _predictions(settings.database_url) == before  # the whole save rolled back
    assert [state for _, state, _ in _states(sessions)] == ["queued"] * 4  # handed back

    monkeypatch.setattr(lifecycle, "mark_failed", real)
    result = process_chunk(ids, token="reread", runtime=runtime)
    assert (result.done, result.failed, result.withdrawn, result.kept) == (3, 1, 1, 0)
    assert _states(sessions)[0] == (ids[0], "failed", "unreadable")
    with sessions() as session:
        message = session.execute(select(Image.error_message)
                                  .where(Image.id == ids[0])).scalar_one()
    assert message == refusal


def test_a_model_failing_at_a_reread_withdraws_nothing(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The model failing (internal_error) says nothing against the earlier reading: the
    three views read keep theirs; the one this release's reader refuses is withdrawn."""
    ids, _, _ = _aged_and_reopened(settings, sessions, tmp_path)
    runtime = WorkerRuntime(settings)

    def fails(*_: object) -> object:
        raise RuntimeError("the model chokes")

    monkeypatch.setattr(runtime.classifier, "predict", fails)
    result = process_chunk(ids, token="reread", runtime=runtime)
    assert (result.done, result.kept, result.withdrawn) == (0, 3, 1)
    assert [state for _, state, _ in _states(sessions)] == ["failed", "done", "done", "done"]


def test_a_withdrawn_image_sent_again_never_gets_its_withdrawn_result_back(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Sent again (a retry) and then found gone: missing_file, not done with the result
    withdrawn before (a prediction from before its new registration is history)."""
    ids, files, _ = _aged_and_reopened(settings, sessions, tmp_path)
    runtime = WorkerRuntime(settings)
    assert process_chunk(ids, token="reread", runtime=runtime).withdrawn == 1
    ds = pydicom.dcmread(files[0])  # the export fixed... and then moved away
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(files[0])
    batch = create_batch(sessions, name="again", priority=Priority.ROUTINE, mode="test")
    assert register_files(sessions, batch, [files[0]]).new_ids == [ids[0]]  # retried
    files[0].unlink()
    result = process_chunk([ids[0]], token="retry", runtime=runtime)
    assert (result.failed, result.kept) == (1, 0)
    assert _states(sessions)[0] == (ids[0], "failed", "missing_file")


def test_a_withdrawn_image_sent_again_with_its_export_fixed_is_scored(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    ids, files, _ = _aged_and_reopened(settings, sessions, tmp_path)
    runtime = WorkerRuntime(settings)
    assert process_chunk(ids, token="reread", runtime=runtime).withdrawn == 1
    ds = pydicom.dcmread(files[0])
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(files[0])
    batch = create_batch(sessions, name="again", priority=Priority.ROUTINE, mode="test")
    assert register_files(sessions, batch, [files[0]]).new_ids == [ids[0]]
    assert process_chunk([ids[0]], token="retry", runtime=runtime).done == 1
    assert _states(sessions)[0] == (ids[0], "done", None)
    with sessions() as session:
        readers = session.execute(select(Prediction.reader_version)
                                  .where(Prediction.image_id == ids[0])).scalars().all()
    assert readers == [READER_VERSION]  # the same model's prediction: replaced
