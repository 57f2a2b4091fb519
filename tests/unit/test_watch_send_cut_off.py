"""A watcher whose send is cut off leaves the block's images to the next sweep.

Redis gone (or killed midway) after a block of dropped files was registered: the watcher
warned that the broker was unavailable and kept watching, but left the images registered,
with no send stamp and no mark: owed a message that looked to everyone like one still on
its way. No sweep sent them before MAMMO_REQUEUE_AFTER_S (600 s), whether or not the
watcher lived to send them again, and `mammo status --health` counted neither owed nor lost
messages while no message of theirs was anywhere. They are left to the sweeper now, as a
`mammo submit` cut off the same way leaves its images. Real Redis and the real watch loop:
the first chunk's message really waits in the broker.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.watch.service import Watcher, WatchOptions
from shared.config import Settings
from shared.db import lifecycle
from shared.queue import QUEUE_NAME, create_celery_app, queue_depth
from shared.synthetic import make_exam_set
from tests.helpers.cli import run_cli
from tests.helpers.processes import wait_for
from tests.helpers.send_faults import broker_gone_after, send_states
from worker.sweeper import SweepLoop

CHUNK = 4
OUTAGE = "database or broker unavailable"


@pytest.fixture
def wired(each_backend_sessions: sessionmaker[Session], settings: Settings,
          redis_url: str) -> Iterator[tuple[Settings, Celery, sessionmaker[Session]]]:
    """SQLite, then PostgreSQL, with a leased Redis database as the broker; the default
    MAMMO_REQUEUE_AFTER_S (600 s) that an owed image was left waiting."""
    url = each_backend_sessions.kw["bind"].url.render_as_string(hide_password=False)
    ready = settings.model_copy(update={
        "broker_url": redis_url, "database_url": url, "chunk_size": CHUNK,
        "patient_id_key": SecretStr("k" * 32), "watch_quiet_period_s": 0.0})
    assert ready.requeue_after_s == 600
    app = create_celery_app(ready)
    yield ready, app, each_backend_sessions
    app.close()


def _drain(app: Celery) -> list[list[int]]:
    """Every chunk in the broker, in the order a worker receives them."""
    chunks = []
    with app.connection_for_read() as conn, conn.channel() as channel:
        while (message := channel.basic_get(QUEUE_NAME, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()
            chunks.append(list(args[0]))
    return chunks


def _health(settings: Settings, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> dict[str, Any]:
    run = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                  database_url=settings.database_url, broker_url=str(settings.broker_url))
    assert run.exit_code == ExitCode.OK, run.output
    health: dict[str, Any] = json.loads(run.stdout)[0]
    return health


def _sweep(app: Celery, settings: Settings) -> None:
    """What a worker runs every MAMMO_SWEEP_INTERVAL_S, seconds after the registration."""
    loop = SweepLoop(app, settings)
    loop.run_once()
    assert loop.follow_up is not None
    loop.follow_up.join(timeout=30)
    loop.follow_up.notifier.sessions.kw["bind"].dispose()


def _watch_while_the_broker_is_gone(settings: Settings, app: Celery,
                                    sessions: sessionmaker[Session], root: Path,
                                    caplog: pytest.LogCaptureFixture) -> list[int]:
    """The real watch loop registers the folder's files in one block; the broker goes
    after the block's first chunk. The watcher keeps running through the outage (and its
    re-sends at each rescan fail as well), then is stopped. The block's image ids."""
    watcher = Watcher(settings, sessions, app, WatchOptions(root))
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    thread = threading.Thread(target=watcher.run, args=(stop,))
    with pytest.MonkeyPatch.context() as patch:
        broker_gone_after(app, patch, 1)
        thread.start()
        try:
            wait_for(lambda: sum(OUTAGE in m for m in caplog.messages) >= 2, timeout=60,
                     what="the outage warning, twice (the block's send, a rescan's re-send)")
            assert thread.is_alive()  # the watch goes on through the outage
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not thread.is_alive()
    return sorted(send_states(sessions))


def test_a_watcher_block_whose_send_is_cut_off_is_left_to_the_next_sweep(
        wired: tuple[Settings, Celery, sessionmaker[Session]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings, app, sessions = wired
    root = tmp_path / "in"
    make_exam_set(root, n_exams=3, seed=61)  # 12 images: one block, 3 chunks

    ids = _watch_while_the_broker_is_gone(settings, app, sessions, root, caplog)

    # The broker is back; the watcher is not (stopped, or killed after its send failed).
    assert len(ids) == 12 and queue_depth(app) == 1  # the first chunk's message went out
    # None looks sent, none is left to a sender: every one is owed, the first chunk's too
    # (which chunk went out is not known to the watcher; a second message is a no-op).
    assert set(send_states(sessions).values()) == {("queued", None, lifecycle.LEFT_TO_SWEEPER)}
    assert any("12 image(s) registered but not sent (BrokerUnavailableError): left to a "
               "worker's sweeper" in m for m in caplog.messages), caplog.messages

    health = _health(settings, monkeypatch, tmp_path)
    assert (health["messages_owed"], health["messages_lost"]) == (12, 0)

    _sweep(app, settings)

    assert None not in {sent for _, sent, _ in send_states(sessions).values()}  # stamped sent
    first, *swept = _drain(app)
    assert first == ids[:CHUNK]  # the one that went out before the cut: sent twice
    assert sorted(i for chunk in swept for i in chunk) == ids  # all 12, at any depth

    _sweep(app, settings)
    assert queue_depth(app) == 0  # sent once, stamped: nothing more to send
    health = _health(settings, monkeypatch, tmp_path)
    assert (health["messages_owed"], health["messages_lost"]) == (0, 0)


def test_the_watchers_own_resend_settles_what_it_left_to_the_sweeper(
        wired: tuple[Settings, Celery, sessionmaker[Session]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The watcher lives on and the broker comes back: its next scan sends the images
    itself. Stamped sent, they are owed nothing: health counts none, and no sweep sends
    them again while their messages wait in the broker."""
    settings, app, sessions = wired
    root = tmp_path / "in"
    make_exam_set(root, n_exams=2, seed=62)  # 8 images: one block, 2 chunks
    ids = _watch_while_the_broker_is_gone(settings, app, sessions, root, caplog)
    assert set(send_states(sessions).values()) == {("queued", None, lifecycle.LEFT_TO_SWEEPER)}

    Watcher(settings, sessions, app, WatchOptions(root)).scan()  # its next scan

    assert None not in {sent for _, sent, _ in send_states(sessions).values()}
    health = _health(settings, monkeypatch, tmp_path)
    assert (health["messages_owed"], health["messages_lost"]) == (0, 0)
    _sweep(app, settings)
    first, *resent = _drain(app)  # the sweep added nothing
    assert first == ids[:CHUNK]
    assert sorted(i for chunk in resent for i in chunk) == ids
