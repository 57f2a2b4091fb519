"""A broker lost in the middle of `mammo submit`: the rows are committed first, so nothing
is lost, and the operator is told what happens to them; submitting the same files again
sends what was never sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer import submission
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.errors import BrokerUnavailableError
from shared.queries import system_health
from shared.queue import QUEUE_NAME, create_celery_app
from shared.synthetic import make_exam_set


def test_a_broker_lost_mid_submit_is_explained_and_a_resubmission_sends_the_rest(
        settings: Settings, tmp_path: Path, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(update={
        "broker_url": redis_url, "patient_id_key": SecretStr("k" * 32)})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    app = create_celery_app(settings)
    make_exam_set(tmp_path / "in", n_exams=2, seed=12)
    real_enqueue = submission.enqueue_chunks

    def lost(*args: Any, **kwargs: Any) -> int:
        raise BrokerUnavailableError("Cannot reach the message broker: connection reset.")

    monkeypatch.setattr(submission, "enqueue_chunks", lost)
    with pytest.raises(BrokerUnavailableError) as caught:
        submission.submit(settings, sessions, app, [tmp_path / "in"])
    assert ("Batch 1 is registered: its 8 image(s) wait in the database, and a worker's "
            "sweeper sends them") in str(caught.value)
    assert "`mammo recover --batch 1`" in str(caught.value)
    with sessions() as session:
        rows = session.execute(select(Image.id, Image.state, Image.enqueued_at)).all()
        # They have waited since registration, though no message went out.
        assert system_health(session, lease_s=60)["oldest_queued_age_s"] is not None
    assert {(state, sent) for _, state, sent in rows} == {("queued", None)}

    monkeypatch.setattr(submission, "enqueue_chunks", real_enqueue)
    again = submission.submit(settings, sessions, app, [tmp_path / "in"])
    assert again.queued == [] and again.requeued == sorted(i for i, _, _ in rows)
    assert again.messages == 2  # 8 images, chunks of 4
    queued = redis.Redis.from_url(redis_url)
    assert sum(queued.llen(key) for key in queued.keys(f"{QUEUE_NAME}*")) == 2
    # A third submission finds them sent: nothing is sent again.
    assert submission.submit(settings, sessions, app, [tmp_path / "in"]).requeued == []
    engine.dispose()
