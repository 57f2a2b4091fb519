"""A file refused as ``internal_error`` at registration (a value the database refused, a
reader's fault) is the same image once the software is fixed: submitting it again, as its
message says, queues the refused image itself.

The refusal is recorded unread, under the file's content hash; the file, read at last,
registers under its DICOM UID. Without adoption the resubmission was a second image and
the refusal stayed among the failures for good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.registration import create_batch, register_files
from shared.db import lifecycle
from shared.db.schema import Image
from shared.enums import ErrorCode, ImageState, Priority
from shared.imaging.readers import read_header
from tests.helpers.bad_inputs import good_dicom, good_png

INTERNAL = ErrorCode.INTERNAL.value


def _batch(sessions: sessionmaker[Session]) -> int:
    return create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")


def _images(sessions: sessionmaker[Session]) -> list[tuple[int, str, str, str | None]]:
    """Every image's (id, identity, state, error code)."""
    with sessions() as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Image.id, Image.identity, Image.state, Image.error_code).order_by(Image.id))]


def _refused_by_the_database(sessions: sessionmaker[Session], path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> int:
    row = registration._row

    def faulty_row(at: Path, *args: Any, **kw: Any) -> dict[str, Any]:
        made = row(at, *args, **kw)
        if made["state"] == ImageState.QUEUED.value:
            made["format"] = None  # NOT NULL: an IntegrityError on either database
        return made

    with monkeypatch.context() as patched:
        patched.setattr(registration, "_row", faulty_row)
        (image_id,) = register_files(sessions, _batch(sessions), [path]).rejected_ids
    return image_id


def _refused_by_a_reader_fault(sessions: sessionmaker[Session], path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> int:
    def broken(*_args: Any, **_kw: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'value'")

    with monkeypatch.context() as patched:
        patched.setattr(registration, "read_header", broken)
        (image_id,) = register_files(sessions, _batch(sessions), [path]).rejected_ids
    return image_id


@pytest.mark.parametrize("refuse", [_refused_by_the_database, _refused_by_a_reader_fault],
                         ids=["database", "reader"])
def test_an_internal_error_refusal_is_queued_when_its_file_is_submitted_again(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch, refuse: Any) -> None:
    sessions = each_backend_sessions
    path = good_dicom(tmp_path / "x.dcm", 1)
    image_id = refuse(sessions, path, monkeypatch)
    assert [row[2:] for row in _images(sessions)] == [("failed", INTERNAL)]

    again = register_files(sessions, _batch(sessions), [path])  # the software fixed
    assert (again.new_ids, again.retried, again.duplicates) == (
        [image_id], {image_id: INTERNAL}, [])
    assert _images(sessions) == [(image_id, read_header(path).identity, "queued", None)]


def test_another_file_now_at_the_refused_path_is_an_image_of_its_own(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = each_backend_sessions
    path = good_dicom(tmp_path / "x.dcm", 1)
    refused = _refused_by_the_database(sessions, path, monkeypatch)
    good_dicom(path, 2)  # the name reused for another image
    again = register_files(sessions, _batch(sessions), [path])
    assert again.retried == {} and len(again.new_ids) == 1
    assert [(row[0], row[2]) for row in _images(sessions)] == [
        (refused, "failed"), (again.new_ids[0], "queued")]


def test_a_file_known_by_its_content_that_a_worker_failed_is_retried_as_itself(
        tmp_path: Path, each_backend_sessions: sessionmaker[Session]) -> None:
    # No UID: the image's identity is its content, the same as an unread refusal's; it is
    # found as itself and retried, never taken for a refusal of another image.
    sessions = each_backend_sessions
    path = good_png(tmp_path / "x.png", 1)
    (image_id,) = register_files(sessions, _batch(sessions), [path]).new_ids
    with sessions() as session:
        lifecycle.mark_failed(session, image_id, ErrorCode.INTERNAL, "the model failed")
        session.commit()
    again = register_files(sessions, _batch(sessions), [path])
    assert again.retried == {image_id: INTERNAL}
    assert [row[2:] for row in _images(sessions)] == [("queued", None)]
