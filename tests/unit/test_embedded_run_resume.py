"""An embedded run that finds images another process claimed: it waits, says so, and takes
them over once their lease has passed (a killed run never gives them back)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer.embedded_run import run_embedded
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.synthetic import make_exam_set


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


@pytest.mark.timeout(90)  # before the fix it waited for ever
def test_a_run_takes_over_the_images_a_killed_run_left_claimed(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"claim_heartbeat_s": 1})  # a lease of 4 s
    files = make_exam_set(tmp_path / "night", n_exams=2, seed=6)
    batch = create_batch(sessions, name="killed", priority=Priority.ROUTINE, mode="embedded")
    ids = register_files(sessions, batch, files).new_ids
    with sessions() as session:  # the killed run's chunk in hand: claimed, never renewed
        lifecycle.claim(session, ids[:4], token="a-killed-run", lease_s=settings.claim_lease_s)
    with caplog.at_level(logging.WARNING, logger="producer.embedded_run"):
        outcome = run_embedded(settings, sessions, [tmp_path / "night"], name="again")
    assert sorted(outcome.submission.requeued) == sorted(ids)
    with sessions() as session:
        assert set(session.scalars(select(Image.state))) == {"done"}
    said = caplog.text
    assert "waiting for 4 image(s) claimed by another process" in said
    assert "until their lease ends at " in said
    assert "took over 4 image(s) whose claim's lease ended" in said
