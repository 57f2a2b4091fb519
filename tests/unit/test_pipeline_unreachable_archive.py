"""An archived copy that cannot even be looked at (Path.exists raising, as on EACCES, ESTALE
or EIO) fails its own image with the reason; its chunk's other images are scored."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, Prediction
from shared.enums import Priority
from shared.synthetic import make_exam_set
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime


def test_an_archived_copy_that_cannot_be_looked_at_fails_alone_with_its_reason(
    settings: Settings, tmp_path: Path,
) -> None:
    settings = settings.model_copy(update={"decode_processes": 0})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", n_exams=1,
                                                        seed=41)).new_ids
    # A real OSError from Path.exists, as EACCES on its folder or ESTALE on a share raise.
    (tmp_path / "processed").mkdir()
    unreachable = tmp_path / "processed" / ("x" * 300 + ".dcm")
    with pytest.raises(OSError, match="too long"):
        unreachable.exists()
    with sessions() as s:
        s.execute(update(Image).where(Image.id == ids[0])
                  .values(archived_path=str(unreachable)))
        s.commit()

    result = process_chunk(ids, token="task-1", runtime=WorkerRuntime(settings))

    assert (result.claimed, result.done, result.failed) == (4, 3, 1)
    with sessions() as s:
        states = {i: state for i, state in s.execute(select(Image.id, Image.state))}
        scored = set(s.execute(select(Prediction.image_id)).scalars())
        bad = s.get(Image, ids[0])
    assert states == {ids[0]: "failed", **{i: "done" for i in ids[1:]}}
    assert scored == set(ids[1:])
    assert bad is not None and (bad.error_code, bad.attempts) == ("unreadable", 1)
    assert "File name too long" in (bad.error_message or "")
    engine.dispose()
