"""A file known by its bytes, registered again with other bytes: one file is one image.

A file without a DICOM UID is identified by the sha256 of its bytes, so each version of a
file its writer was still at (a stall past the drop folder's grace period, an empty file
filled later) became an image of its own: the half file's failed ``truncated`` (or the
empty one's ``unreadable``) stayed for ever beside the complete file's image, in the
batch's counts, its failure list and `mammo status`. Registered in the same batch, the new
version now takes the failed one's place; a DICOM UID, another batch, another path, a
failure for the file's content, a filed-away file or another picture keeps it.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.registration import Registration, create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, DuplicateSubmission, Image
from shared.enums import ErrorCode, ImageState, Priority
from shared.queries import ResultFilter, batch_status, list_results
from tests.helpers.bad_inputs import good_dicom, good_png
from tests.helpers.dicom_edit import rewrite_dicom


def _sessions(url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    yield from _sessions(sqlite_url)


@pytest.fixture
def pg_sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    yield from _sessions(postgres_url)


def _batch(sessions: sessionmaker[Session]) -> int:
    return create_batch(sessions, name="watch", priority=Priority.ROUTINE, mode="watch")


def _half(path: Path, seed: int = 3) -> bytes:
    """Write the first half of a PNG at ``path``; return the whole file's bytes."""
    data = good_png(path, seed).read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return data


def _fail(sessions: sessionmaker[Session], image_id: int,
          code: ErrorCode = ErrorCode.TRUNCATED) -> None:
    """What the worker does with the half file."""
    with sessions() as session:
        assert lifecycle.mark_failed(session, image_id, code, "cut short")
        session.commit()


def _images(sessions: sessionmaker[Session]) -> list[tuple[int, str, str, str | None]]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Image.id, Image.source, Image.state, Image.error_code).order_by(Image.id))]


def _counts(sessions: sessionmaker[Session], batch: int) -> tuple[int, int, int]:
    """(submitted, duplicates, copy rows) of ``batch``."""
    with sessions() as session:
        found = session.get(Batch, batch)
        assert found is not None
        copies = len(session.scalars(select(DuplicateSubmission.id).where(
            DuplicateSubmission.batch_id == batch)).all())
        return found.submitted, found.duplicates, copies


def _stalled_then_completed(tmp_path: Path, sessions: sessionmaker[Session]
                            ) -> tuple[int, int, Path, Registration]:
    """A PNG queued half written (its writer stalled past the grace period) and failed
    truncated; then completed and registered again in the same batch."""
    path = tmp_path / "stalled.png"
    data = _half(path)
    batch = _batch(sessions)
    (half_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, half_id)
    path.write_bytes(data)
    return batch, half_id, path, register_files(sessions, batch, [path])


def test_a_completed_file_takes_the_place_of_its_half_versions_failure(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    sessions = each_backend_sessions
    batch, half_id, path, completed = _stalled_then_completed(tmp_path, sessions)
    (image_id,) = completed.new_ids
    assert _images(sessions) == [(image_id, str(path), "queued", None)]
    assert _counts(sessions, batch) == (1, 0, 0)  # one file, counted once
    with sessions() as session:
        status = batch_status(session, batch)
        rows = list_results(session, ResultFilter(batch_id=batch, include_duplicates=True))
    assert status is not None and status.counts == {"queued": 1} and status.copies == {}
    assert [(row["image_id"], row["state"]) for row in rows] == [(image_id, "queued")]
    assert completed.superseded == [half_id]


def test_an_empty_file_filled_later_is_one_image(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # Refused unread at registration (empty), then filled after the grace period.
    sessions = each_backend_sessions
    path = tmp_path / "late.png"
    path.write_bytes(b"")
    batch = _batch(sessions)
    (empty_id,) = register_files(sessions, batch, [path]).rejected_ids
    assert _images(sessions) == [(empty_id, str(path), "failed", ErrorCode.UNREADABLE.value)]
    good_png(path, 4)
    filled = register_files(sessions, batch, [path])
    assert _images(sessions) == [(filled.new_ids[0], str(path), "queued", None)]
    assert _counts(sessions, batch) == (1, 0, 0)
    assert filled.superseded == [empty_id]


def test_each_version_replaces_the_one_before(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # A file closed after each chunk: every failed version goes, the last one stays.
    sessions = each_backend_sessions
    path = tmp_path / "chunked.png"
    data = good_png(path, 5).read_bytes()
    batch = _batch(sessions)
    for end in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
        path.write_bytes(data[:end])
        (version_id,) = register_files(sessions, batch, [path]).new_ids
        _fail(sessions, version_id)
    path.write_bytes(data)
    (image_id,) = register_files(sessions, batch, [path]).new_ids
    assert _images(sessions) == [(image_id, str(path), "queued", None)]
    assert _counts(sessions, batch) == (1, 0, 0)


def test_the_failure_is_removed_when_the_file_is_registered_again_after_it(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # The complete file was registered while the half one was still queued; the half one
    # failed after (the worker found other bytes there). The drop folder registers the file
    # again once it sees the failure and the file changed: that removes it.
    sessions = each_backend_sessions
    path = tmp_path / "raced.png"
    data = _half(path)
    batch = _batch(sessions)
    (half_id,) = register_files(sessions, batch, [path]).new_ids
    path.write_bytes(data)
    (image_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, half_id, ErrorCode.MISSING_FILE)
    again = register_files(sessions, batch, [path])
    assert _images(sessions) == [(image_id, str(path), "queued", None)]
    assert _counts(sessions, batch) == (1, 0, 0)
    assert again.superseded == [half_id] and again.new_ids == again.duplicates == []


def test_a_copy_of_an_empty_files_failure_is_dropped_once_the_file_is_filled(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # Every empty file has the same bytes: the second is recorded as a copy of the first's
    # failure. Filled, each is an image of its own, and neither failure nor copy is left.
    sessions = each_backend_sessions
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(b"")
    second.write_bytes(b"")
    batch = _batch(sessions)
    (empty_id,) = register_files(sessions, batch, [first]).rejected_ids
    assert [copy[1] for copy in register_files(sessions, batch, [second]).duplicates] \
        == [empty_id]
    good_png(second, 6)
    (second_id,) = register_files(sessions, batch, [second]).new_ids
    assert _counts(sessions, batch) == (2, 0, 0)  # the failure stays: a.png is still empty
    assert [row[0] for row in _images(sessions)] == [empty_id, second_id]
    good_png(first, 7)
    (first_id,) = register_files(sessions, batch, [first]).new_ids
    assert [row[2:] for row in _images(sessions)] == [("queued", None)] * 2
    assert {row[0] for row in _images(sessions)} == {first_id, second_id}
    assert _counts(sessions, batch) == (2, 0, 0)


def test_another_batchs_failure_stays(tmp_path: Path,
                                      each_backend_sessions: sessionmaker[Session]) -> None:
    # A name reused another day (another day's drop-folder batch) may be another image.
    sessions = each_backend_sessions
    path = tmp_path / "x.png"
    data = _half(path)
    (half_id,) = register_files(sessions, _batch(sessions), [path]).new_ids
    _fail(sessions, half_id)
    path.write_bytes(data)
    later = register_files(sessions, _batch(sessions), [path])
    assert [row[2:] for row in _images(sessions)] == [
        ("failed", ErrorCode.TRUNCATED.value), ("queued", None)]
    assert later.superseded == []


@pytest.mark.parametrize("case", ["another path", "content failure", "filed away",
                                  "another picture", "copied"])
def test_what_is_not_an_earlier_version_of_the_file_stays(
        tmp_path: Path, sessions: sessionmaker[Session], case: str) -> None:
    path = tmp_path / "x.png"
    data = _half(path)
    batch = _batch(sessions)
    reg = register_files(sessions, batch, [path])
    (old_id,) = reg.new_ids or reg.rejected_ids
    _fail(sessions, old_id, ErrorCode.NOT_MAMMOGRAPHY if case == "content failure"
          else ErrorCode.TRUNCATED)
    if case == "filed away":  # the watcher filed it to failed/: that failure is final
        with sessions() as session:
            session.execute(update(Image).where(Image.id == old_id)
                            .values(archived_path=str(tmp_path / "failed" / "x.png")))
            session.commit()
    if case == "copied":  # another file holds the half file's bytes
        shutil.copy(path, tmp_path / "copy.png")
        register_files(sessions, batch, [tmp_path / "copy.png"])
    if case == "another path":
        path = tmp_path / "y.png"
    if case == "another picture":  # the name reused for an image of another size
        good_png(path, 8)
        path.write_bytes(_resized_png(path))
    else:
        path.write_bytes(data)
    later = register_files(sessions, batch, [path])
    assert old_id in [row[0] for row in _images(sessions)]
    assert len(_images(sessions)) == 2
    assert later.superseded == []


def _resized_png(path: Path) -> bytes:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    ok, encoded = cv2.imencode(".png", pixels[:64])
    assert ok
    return encoded.tobytes()


def test_a_failure_read_without_its_header_stays_for_a_dicom_uid(
        tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    # A file refused unread (here empty) is recorded under its bytes; a complete DICOM at its
    # path is known by its SOP Instance UID, not as a new version of those bytes: nothing
    # is removed.
    path = tmp_path / "x.dcm"
    path.write_bytes(b"")
    batch = _batch(sessions)
    (refused_id,) = register_files(sessions, batch, [path]).rejected_ids
    assert _images(sessions) == [(refused_id, str(path), "failed", ErrorCode.UNREADABLE.value)]
    good_dicom(path, 2)
    later = register_files(sessions, batch, [path])
    assert refused_id in [row[0] for row in _images(sessions)]
    assert later.superseded == [] and len(later.new_ids) == 1


def test_an_image_known_by_its_dicom_uid_stays(tmp_path: Path,
                                               sessions: sessionmaker[Session]) -> None:
    # Its UID names the image whatever the bytes (a complete file is retried as the same
    # image, ``_retry``): a file at its path without that UID is not a version of it.
    path = good_dicom(tmp_path / "x.dcm", 3)
    batch = _batch(sessions)
    (image_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, image_id)
    rewrite_dicom(path, SOPInstanceUID=None)  # the same picture, known by its bytes now
    later = register_files(sessions, batch, [path])
    assert [row[2] for row in _images(sessions)] == ["failed", "queued"]
    assert later.superseded == [] and len(later.new_ids) == 1


# -- two producers at once (PostgreSQL: SQLite runs one writer at a time) ------------------


def _racing(monkeypatch: pytest.MonkeyPatch, act: Any) -> None:
    """Run ``act`` once, just before registration deletes a superseded image: what another
    producer may do between its look and its delete."""
    check = registration._another_image
    done: list[bool] = []

    def checked(row: dict[str, Any], stored: Any) -> bool:
        if not done:
            done.append(True)
            act(stored.id)
        return check(row, stored)

    monkeypatch.setattr(registration, "_another_image", checked)


def test_a_failure_another_producer_removed_first_is_counted_once(
        tmp_path: Path, pg_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = pg_sessions
    path = tmp_path / "x.png"
    data = _half(path)
    batch = _batch(sessions)
    (half_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, half_id)
    path.write_bytes(data)

    def removed_by_the_other(image_id: int) -> None:
        with sessions() as other:
            other.execute(delete(Image).where(Image.id == image_id))
            other.execute(update(Batch).where(Batch.id == batch)
                          .values(submitted=Batch.submitted - 1))
            other.commit()

    _racing(monkeypatch, removed_by_the_other)
    completed = register_files(sessions, batch, [path])
    assert [row[2] for row in _images(sessions)] == ["queued"]
    assert _counts(sessions, batch) == (1, 0, 0)
    assert completed.superseded == []


def test_a_failure_copied_by_another_producer_meanwhile_stays(
        tmp_path: Path, pg_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The other producer records a copy of the half file and commits while this one's
    # delete waits on the row it locked: the delete fails on the copy's reference, and the
    # registration goes on without it.
    sessions = pg_sessions
    path = tmp_path / "x.png"
    data = _half(path)
    batch = _batch(sessions)
    (half_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, half_id)
    path.write_bytes(data)
    locked = threading.Event()

    def copy_recorded_meanwhile(image_id: int) -> None:
        def other() -> None:
            with sessions() as session:
                session.add(DuplicateSubmission(batch_id=batch, image_id=image_id,
                                                source=str(tmp_path / "copy.png")))
                session.flush()  # holds a key-share lock on the image row
                locked.set()
                threading.Event().wait(1.0)  # this producer's delete now waits on it
                session.commit()

        threading.Thread(target=other, daemon=True).start()
        assert locked.wait(10)

    _racing(monkeypatch, copy_recorded_meanwhile)
    completed = register_files(sessions, batch, [path])
    assert [row[2] for row in _images(sessions)] == ["failed", "queued"]
    assert completed.superseded == [] and len(completed.new_ids) == 1


def test_two_producers_registering_the_completed_file_at_once(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # Two watchers on one folder: the failure is removed once, the file counted once.
    sessions = each_backend_sessions
    path = tmp_path / "x.png"
    data = _half(path)
    batch = _batch(sessions)
    (half_id,) = register_files(sessions, batch, [path]).new_ids
    _fail(sessions, half_id)
    path.write_bytes(data)
    start = threading.Barrier(2)
    results: list[Registration] = []
    errors: list[BaseException] = []

    def producer() -> None:
        start.wait()
        try:
            results.append(register_files(sessions, batch, [path]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert [row[2] for row in _images(sessions)] == [ImageState.QUEUED.value]
    assert _counts(sessions, batch) == (1, 0, 0)
    assert sorted(i for r in results for i in r.superseded) == [half_id]
