"""A submit whose registration fails (a full disk, a database gone) leaves no empty batch
listed as open for ever; a batch that registered files before failing is kept, since
those images wait in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from producer import submission
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.queue import create_celery_app
from shared.synthetic import make_exam_set

DISK_FULL = OperationalError("INSERT INTO images", {}, Exception("database or disk is full"))


def _counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        return (session.scalar(select(func.count()).select_from(Batch)) or 0,
                session.scalar(select(func.count()).select_from(Image)) or 0)


@pytest.mark.parametrize("registered_first", [False, True])
def test_a_failed_registration_leaves_no_empty_batch(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        registered_first: bool) -> None:
    settings = settings.model_copy(update={"patient_id_key": SecretStr("k" * 32)})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    make_exam_set(tmp_path / "in", n_exams=1, seed=3)
    real_register = submission.register_files

    def failing(*args: Any, **kwargs: Any) -> Any:
        if registered_first:
            real_register(*args, **kwargs)
        raise DISK_FULL

    monkeypatch.setattr(submission, "register_files", failing)
    with pytest.raises(OperationalError, match="disk is full"):
        submission.submit(settings, sessions, create_celery_app(settings), [tmp_path / "in"])
    # Kept only where its four images wait in it (a worker's sweeper sends them).
    assert _counts(sessions) == ((1, 4) if registered_first else (0, 0))
    engine.dispose()
