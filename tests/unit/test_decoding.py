"""The chunk decoder pool: same tensors as in-process, failures with reasons, crashes isolated."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.imaging.model_input import ModelInputSource
from shared.synthetic import make_exam_set, write_truncated_copy
from worker.decoding import ChunkDecoder, Decoded, DecodeFailure, DecodeJob, DecoderCrashed
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


def _jobs(paths: list[Path]) -> list[DecodeJob]:
    return [DecodeJob(i, ModelInputSource(str(p), "L", None, (64, 64), 80_000_000))
            for i, p in enumerate(paths)]


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    good = make_exam_set(tmp_path / "in", n_exams=1, seed=11)
    bad = write_truncated_copy(good[0], tmp_path / "in" / "bad.dcm")
    return [*good[:2], bad, good[2]]


def test_pool_gives_the_in_process_tensors_in_order_and_failures_with_reasons(
    files: list[Path],
) -> None:
    pool = ChunkDecoder(2)
    try:
        pooled = pool.decode_all(_jobs(files))
    finally:
        pool.close()
    serial = ChunkDecoder(0).decode_all(_jobs(files))

    assert [r.image_id for r in pooled] == [0, 1, 2, 3]
    assert isinstance(pooled[2], DecodeFailure) and pooled[2].code.value == "truncated"
    for a, b in zip(pooled, serial, strict=True):
        if isinstance(a, Decoded):
            assert isinstance(b, Decoded) and a.tensor.tobytes() == b.tensor.tobytes()
            assert a.decode_ms > 0 and a.preprocess_ms > 0
            assert a.tensor.shape == (64, 64, 1) and a.tensor.dtype == np.float32


def test_a_killed_decoder_is_reported_and_the_next_chunk_gets_a_fresh_pool(
    files: list[Path],
) -> None:
    pool = ChunkDecoder(1)
    try:
        pool.decode_all(_jobs(files[:1]))
        victims = list(pool._pool._processes)  # type: ignore[union-attr]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(DecoderCrashed):
            pool.decode_all(_jobs(files[:2]))
        again = pool.decode_all(_jobs(files[:2]))
    finally:
        pool.close()
    assert all(isinstance(r, Decoded) for r in again)


def test_a_decoder_crash_charges_only_the_image_that_causes_it(
    settings: Settings, files: list[Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings.model_copy(update={"max_attempts": 2, "decode_processes": 0})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    good = [f for f in files if f.name != "bad.dcm"]
    ids = register_files(sessions, batch, good).new_ids
    culprit = ids[1]
    runtime = WorkerRuntime(settings)
    decode_all = runtime.decoder.decode_all

    def crashing(jobs: list[DecodeJob]) -> list[object]:
        if any(job.image_id == culprit for job in jobs):
            raise DecoderCrashed("a decoder process died")  # as a segfaulting codec would
        return decode_all(jobs)  # type: ignore[return-value]

    monkeypatch.setattr(runtime.decoder, "decode_all", crashing)

    result = process_chunk(ids, token="task-1", runtime=runtime)

    assert (result.done, result.failed) == (len(ids) - 1, 1)
    with sessions() as s:
        rows = {i.id: i for i in s.execute(select(Image)).scalars()}
    assert rows[culprit].state == "failed" and rows[culprit].error_code == "poison"
    assert rows[culprit].attempts == settings.max_attempts + 1
    # Its neighbours were charged nothing for the crash: one claim each, then done.
    assert all(rows[i].state == "done" and rows[i].attempts == 1 for i in ids if i != culprit)
    engine.dispose()


def test_a_file_replaced_after_it_was_queued_is_refused_not_scored_as_the_image(
    settings: Settings, tmp_path: Path,
) -> None:
    # A scanner reused the name: the path now holds another exam's image.
    settings = settings.model_copy(update={"decode_processes": 0})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    queued = make_exam_set(tmp_path / "in", n_exams=1, seed=12)
    other = make_exam_set(tmp_path / "other", n_exams=1, seed=13)
    ids = register_files(sessions, batch, queued).new_ids
    queued[1].write_bytes(other[1].read_bytes())
    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))
    assert (result.done, result.failed) == (len(ids) - 1, 1)
    with sessions() as s:
        replaced = s.execute(select(Image).where(Image.id == ids[1])).scalar_one()
    assert replaced.state == "failed" and replaced.error_code == "missing_file"
    assert "was replaced by another file after it was queued" in (replaced.error_message or "")
    engine.dispose()
