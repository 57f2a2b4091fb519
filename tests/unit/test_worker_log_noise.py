"""A worker's log warns about what needs an operator, not about sweeps that changed nothing,
nor with Celery's six-line notice on every broker drop."""

from __future__ import annotations

import logging
import time
import warnings
from types import SimpleNamespace

import pytest
from celery.worker.consumer.consumer import Consumer
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.enums import Priority
from shared.queue import create_celery_app, enqueue_chunks
from tests.helpers.db import queued_batch
from worker.sweeper import SweepLoop


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _sweep_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "worker.sweeper"
            and r.getMessage().startswith("sweeper: re-queued")]


def test_a_sweep_that_left_queued_images_to_a_busy_broker_is_not_a_warning(
    settings: Settings, sessions: sessionmaker[Session], redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"broker_url": redis_url, "requeue_after_s": 1})
    app = create_celery_app(settings)
    _, ids = queued_batch(sessions, "night", 3)
    enqueue_chunks(app, ids, chunk_size=4, priority=Priority.ROUTINE)  # still in the queue
    with sessions() as session:  # stamped sent, as a producer does after its send
        lifecycle.mark_enqueued(session, ids)
        session.commit()
    time.sleep(1.5)  # the images are now "queued too long"
    loop = SweepLoop(app, settings)
    with caplog.at_level(logging.INFO, logger="worker.sweeper"):
        loop.run_once()
        [record] = _sweep_records(caplog)
        assert record.getMessage().startswith("sweeper: re-queued 0 image(s)")
        assert record.levelno == logging.INFO
        app.connection_for_write().default_channel.queue_purge("mammo")  # the message is lost
        caplog.clear()
        loop.run_once()
        [record] = _sweep_records(caplog)
        assert record.getMessage().startswith("sweeper: re-queued 3 image(s)")
        assert record.levelno == logging.WARNING
    assert loop.follow_up is not None
    loop.follow_up.join(timeout=30)


def test_a_broker_drop_does_not_dump_celerys_cancel_notice(settings: Settings) -> None:
    app = create_celery_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    consumer = SimpleNamespace(app=app, connection=None, qos_global=False, max_prefetch_count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as pytest's own filter: a warning fails the test
        create_celery_app(settings)  # the filter is installed with the app
        Consumer.on_connection_error_after_connected(consumer, ConnectionError("Redis restarted"))
