"""The host running short (no memory, too many open files) is never blamed on the file.

Probe (ulimit -v / prlimit --as): numpy's MemoryError in the DICOM reader failed a healthy
image ``unreadable``, which a resubmission does not retry. Probe (ulimit -n 16-28): EMFILE
starting the decoder processes escaped the chunk, charged each image an attempt per run,
until healthy images ended ``poison`` ("check the file").
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import shared.imaging.readers.dicom as dicom_reader
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.imaging.readers import DICOM, PNG
from shared.imaging.readers.base import read_bytes
from shared.synthetic import make_exam_set
from worker import decoding
from worker.decoding import DecodersUnavailable
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

_NO_MEMORY = ("Unable to allocate 52.0 MiB for an array with shape (4096, 3328) and data type "
              "float32")


def _queued(settings: Settings, folder: Path) -> tuple[sessionmaker[Session], list[int], Any]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    files = make_exam_set(folder, n_exams=1, seed=21)
    return sessions, register_files(sessions, batch, files).new_ids, engine


def _rows(sessions: sessionmaker[Session]) -> dict[int, Image]:
    with sessions() as s:
        return {i.id: i for i in s.execute(select(Image)).scalars()}


def _out_of_memory(monkeypatch: pytest.MonkeyPatch, times: int | None) -> None:
    """The DICOM reader's pixel step raises numpy's MemoryError ``times`` times (None: always)."""
    display = dicom_reader._display_pixels
    left = [times]

    def short(*args: Any, **kwargs: Any) -> Any:
        if left[0] is None or left[0] > 0:
            if left[0] is not None:
                left[0] -= 1
            raise MemoryError(_NO_MEMORY)
        return display(*args, **kwargs)

    monkeypatch.setattr(dicom_reader, "_display_pixels", short)


def test_memory_error_in_the_dicom_reader_is_raised_not_called_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = make_exam_set(tmp_path, n_exams=1, seed=22)[0]
    _out_of_memory(monkeypatch, None)
    with pytest.raises(MemoryError):
        DICOM.decode(path, max_pixels=80_000_000)


def test_opencv_out_of_memory_and_emfile_on_open_are_raised_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.full((64, 48), 900, np.uint16))

    def no_memory(*_: Any) -> None:
        exc = cv2.error("Insufficient memory")
        exc.code = cv2.Error.StsNoMem
        raise exc

    monkeypatch.setattr(cv2, "imdecode", no_memory)
    with pytest.raises(MemoryError):
        PNG.decode(png, max_pixels=80_000_000)

    def emfile(self: Path) -> bytes:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_bytes", emfile)
    with pytest.raises(OSError) as raised:
        read_bytes(png)
    assert raised.value.errno == errno.EMFILE


def test_an_image_that_meets_no_memory_once_is_retried_and_scored(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings.model_copy(update={"decode_processes": 0, "max_attempts": 3})
    sessions, ids, engine = _queued(settings, tmp_path / "in")
    _out_of_memory(monkeypatch, 1)  # the first image read, in the chunk's first pass
    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))
    assert (result.done, result.failed) == (len(ids), 0)
    assert all(row.state == "done" for row in _rows(sessions).values())
    engine.dispose()


def test_an_image_that_never_gets_the_memory_ends_poison_naming_memory_not_unreadable(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings.model_copy(update={"decode_processes": 0, "max_attempts": 2})
    sessions, ids, engine = _queued(settings, tmp_path / "in")
    _out_of_memory(monkeypatch, None)
    process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))
    rows = _rows(sessions)
    for row in rows.values():
        # poison is retried when the file is sent again; unreadable is not.
        assert row.state == "failed" and row.error_code == "poison"
        assert row.attempts == settings.max_attempts + 1
        message = row.error_message or ""
        assert "out of memory" in message and "no fault of the file" in message
        assert "check the file" not in message
    engine.dispose()


class _NoFiles:
    """A process pool whose every decoder start meets the open-file limit."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def submit(self, *_: Any, **__: Any) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    def shutdown(self, *_: Any, **__: Any) -> None:
        pass


@pytest.mark.parametrize("earlier_attempts", [0, 1], ids=["first-pass", "image-by-image"])
def test_decoders_that_cannot_start_hand_the_claims_back_with_attempts_refunded(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, earlier_attempts: int,
) -> None:
    settings = settings.model_copy(update={"decode_processes": 2, "max_attempts": 3})
    sessions, ids, engine = _queued(settings, tmp_path / "in")
    if earlier_attempts:  # a redelivered chunk: run image by image
        with sessions() as s:
            s.execute(update(Image).values(attempts=earlier_attempts))
            s.commit()
    monkeypatch.setattr(decoding, "ProcessPoolExecutor", _NoFiles)
    runtime = WorkerRuntime(settings)
    for _ in range(settings.max_attempts + 1):  # every run of the chunk: none charged
        with pytest.raises(DecodersUnavailable, match="ulimit -n / systemd LimitNOFILE"):
            process_chunk(ids, token="task-1", runtime=runtime)
    for row in _rows(sessions).values():
        assert row.state == "queued" and row.claim_token is None
        assert row.attempts == earlier_attempts
    assert "too many open files: raise the open-file limit" in caplog.text
    assert "handed back, attempts refunded" in caplog.text
    engine.dispose()
