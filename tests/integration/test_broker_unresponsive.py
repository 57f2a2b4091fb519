"""A broker that stops answering without closing its connections.

A Redis paused (a VM snapshot, SIGSTOP), failed over behind a virtual IP, or cut off by a
firewall that drops an idle flow keeps the TCP connection open and never replies.
redis-py waits for a reply for ever unless told otherwise: `mammo submit` and `mammo
status` hung (both still waiting after 120 s and 60 s), and so did any send, a worker's
sweep included, however long the pause. Every broker command now has a deadline
(``MAMMO_BROKER_SOCKET_TIMEOUT_S``, 30 s; a quick question such as "is it up" 3 s).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from producer import submission
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db import lifecycle
from shared.errors import BrokerUnavailableError
from shared.queue import create_celery_app
from shared.synthetic import make_exam_set
from tests.helpers.processes import mammo_env, run_mammo
from tests.helpers.send_faults import send_states
from tests.helpers.services import PrivateRedis

pytestmark = pytest.mark.integration


def _pause(server: PrivateRedis) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # listening, accepting, never answering


def test_submit_and_status_against_a_broker_that_never_answers_fail_fast_and_say_why(
        private_redis: PrivateRedis, tmp_path: Path) -> None:
    make_exam_set(tmp_path / "in", n_exams=1, seed=61)
    database = tmp_path / "mammo.db"
    env = mammo_env(broker_url=private_redis.url, database_url=f"sqlite:///{database}",
                    patient_id_key="k" * 32)
    _pause(private_redis)

    started = time.monotonic()
    submitted = run_mammo(["submit", str(tmp_path / "in")], env, tmp_path, timeout=90)
    assert submitted.returncode == ExitCode.BROKER_UNAVAILABLE, submitted.stderr
    assert "Cannot reach the message broker" in submitted.stderr
    assert "Timeout reading from" in submitted.stderr
    assert time.monotonic() - started < 60  # 3 s per try; never the old wait for ever
    assert not database.exists()  # nothing registered: the check comes first

    started = time.monotonic()
    health = run_mammo(["status", "--health", "--format", "json"], env, tmp_path, timeout=90)
    assert health.returncode == ExitCode.BROKER_UNAVAILABLE, health.stderr  # a probe reads it
    assert json.loads(health.stdout)[0]["broker"] == "UNREACHABLE"
    assert time.monotonic() - started < 60


def test_a_send_cut_off_by_a_silent_broker_ends_and_leaves_its_images_to_the_sweeper(
        private_redis: PrivateRedis, tmp_path: Path, settings: Settings,
        each_backend_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker answers the submit's check, then falls silent before the first send."""
    sessions = each_backend_sessions
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    settings = settings.model_copy(update={
        "broker_url": private_redis.url, "database_url": url, "patient_id_key": SecretStr("k" * 32),
        "broker_socket_timeout_s": 5.0})
    app = create_celery_app(settings)
    make_exam_set(tmp_path / "in", n_exams=2, seed=62)
    real_send = app.send_task

    def send_to_a_paused_broker(*args: object, **kwargs: object) -> object:
        _pause(private_redis)
        return real_send(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", send_to_a_paused_broker)
    outcome: list[BaseException | None] = []

    def submit() -> None:
        try:
            submission.submit(settings, sessions, app, [tmp_path / "in"])
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    sender = threading.Thread(target=submit, daemon=True)
    sender.start()
    sender.join(timeout=120)
    assert not sender.is_alive(), "the send still waits on a broker that never answers"
    assert isinstance(outcome[0], BrokerUnavailableError), outcome
    rows = send_states(sessions)
    assert len(rows) == 8
    assert set(rows.values()) == {("queued", None, lifecycle.LEFT_TO_SWEEPER)}
