"""A `mammo submit` whose send is cut off midway leaves its images to the next sweep.

Redis killed (or its writes held, then the server gone) after the batch was registered: the
submit exited 8 saying a worker's sweeper sends the images once the broker is back, but
left them as registered, owed a message that looked to everyone like one still on its way.
No sweep sent them before MAMMO_REQUEUE_AFTER_S (600 s, an urgent batch too), and `mammo
status --health` counted neither owed nor lost messages while no message of theirs was
anywhere. They are left to the sweeper now, as a re-send that failed leaves them
(``recovery.requeue``). Real Redis: the first chunk's message really waits in the broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from producer import submission
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.enums import Priority
from shared.errors import BrokerUnavailableError
from shared.queue import QUEUE_NAME, create_celery_app, queue_depth
from shared.synthetic import make_exam_set
from tests.helpers.cli import run_cli
from tests.helpers.send_faults import broker_gone_after, send_states
from worker.sweeper import SweepLoop

CHUNK = 4


@pytest.fixture
def wired(each_backend_sessions: sessionmaker[Session], settings: Settings,
          redis_url: str) -> Iterator[tuple[Settings, Celery, sessionmaker[Session]]]:
    """SQLite, then PostgreSQL, with a leased Redis database as the broker; the default
    MAMMO_REQUEUE_AFTER_S (600 s) that an owed image was left waiting."""
    url = each_backend_sessions.kw["bind"].url.render_as_string(hide_password=False)
    ready = settings.model_copy(update={
        "broker_url": redis_url, "database_url": url, "chunk_size": CHUNK,
        "patient_id_key": SecretStr("k" * 32)})
    assert ready.requeue_after_s == 600
    app = create_celery_app(ready)
    yield ready, app, each_backend_sessions
    app.close()


def _drain(app: Celery) -> list[tuple[list[int], int]]:
    """Every chunk in the broker with its priority, in the order a worker receives them."""
    chunks = []
    with app.connection_for_read() as conn, conn.channel() as channel:
        while (message := channel.basic_get(QUEUE_NAME, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()
            chunks.append((list(args[0]), int(message.properties.get("priority", -1))))
    return chunks


def test_a_submit_cut_off_after_its_first_chunk_leaves_every_image_to_the_next_sweep(
        wired: tuple[Settings, Celery, sessionmaker[Session]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app, sessions = wired
    make_exam_set(tmp_path / "in", n_exams=3, seed=41)  # 12 images: 3 chunks
    broker_gone_after(app, monkeypatch, 1, KombuOperationalError(
        "Error 111 connecting to 127.0.0.1:6379. Connection refused."))

    with pytest.raises(BrokerUnavailableError) as caught:
        submission.submit(settings, sessions, app, [tmp_path / "in"],
                          priority=Priority.URGENT)
    monkeypatch.undo()  # the broker is back

    rows = send_states(sessions)
    ids = sorted(rows)
    assert len(ids) == 12 and queue_depth(app) == 1  # the first chunk's message went out
    # None looks sent, none is left to a sender: every one is owed, the first chunk's too
    # (which chunk went out is not known to the submit; a second message is a no-op).
    assert set(rows.values()) == {("queued", None, lifecycle.LEFT_TO_SWEEPER)}
    assert "sweeper sends them at its next pass once the broker is back" in str(caught.value)

    health_run = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                         database_url=settings.database_url, broker_url=str(settings.broker_url))
    assert health_run.exit_code == ExitCode.OK, health_run.output
    health = json.loads(health_run.stdout)[0]
    assert (health["messages_owed"], health["messages_lost"]) == (12, 0)

    loop = SweepLoop(app, settings)  # what a worker runs, seconds after registration
    loop.run_once()
    assert loop.follow_up is not None
    loop.follow_up.join(timeout=30)
    loop.follow_up.notifier.sessions.kw["bind"].dispose()

    assert None not in {sent for _, sent, _ in send_states(sessions).values()}  # stamped sent
    chunks = _drain(app)
    first, *swept = chunks
    assert sorted(i for chunk, _ in swept for i in chunk) == ids  # all 12, at any depth
    assert {priority for _, priority in chunks} == {Priority.URGENT.broker_priority}
    assert first[0] == ids[:CHUNK]  # the one that went out before the cut: sent twice

    again = SweepLoop(app, settings)
    again.run_once()
    assert again.follow_up is not None
    again.follow_up.join(timeout=30)
    again.follow_up.notifier.sessions.kw["bind"].dispose()
    assert queue_depth(app) == 0  # sent once, stamped: nothing more to send


def test_a_submit_interrupted_while_sending_leaves_its_images_to_the_next_sweep(
        wired: tuple[Settings, Celery, sessionmaker[Session]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a long send: nothing of this submit sends the rest."""
    settings, app, sessions = wired
    make_exam_set(tmp_path / "in", n_exams=2, seed=42)
    broker_gone_after(app, monkeypatch, 1, KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        submission.submit(settings, sessions, app, [tmp_path / "in"])

    assert set(send_states(sessions).values()) == {("queued", None, lifecycle.LEFT_TO_SWEEPER)}
