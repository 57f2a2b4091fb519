"""Security properties with real processes: JSON-only messages, no pickle execution."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from kombu import Exchange, Producer, Queue

from shared.config import Settings
from shared.queue import QUEUE_NAME, TASK_PROCESS_CHUNK, create_celery_app
from tests.helpers.processes import WorkerProcess, mammo_env, wait_for

pytestmark = pytest.mark.integration


class _Exploit:
    """Unpickling this creates a file: proof that untrusted bytes were executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # noqa: SIM115 - the side effect is the point


def test_pickle_message_is_refused_and_never_executed(
    tmp_path: Path, redis_url: str, sqlite_url: str, tiny_model_dir: Path,
) -> None:
    marker = tmp_path / "pwned"
    env = mammo_env(broker_url=redis_url, database_url=sqlite_url, model=str(tiny_model_dir))
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        wait_for(lambda: "ready" in worker.log(), timeout=120, what="worker ready",
                 on_timeout=worker.log)
        body = pickle.dumps(((_Exploit(marker),), {}, {}))
        app = create_celery_app(Settings(broker_url=redis_url, _env_file=None))  # type: ignore[call-arg]
        with app.connection_for_write() as conn:  # same transport options as the workers
            producer = Producer(conn.default_channel)
            queue = Queue(QUEUE_NAME, Exchange(QUEUE_NAME), routing_key=QUEUE_NAME)
            producer.publish(
                body, exchange=queue.exchange, routing_key=QUEUE_NAME, declare=[queue],
                content_type="application/x-python-serialize", content_encoding="binary",
                headers={"task": TASK_PROCESS_CHUNK, "id": "evil-1", "lang": "py",
                         "argsrepr": "", "kwargsrepr": ""},
            )
        wait_for(lambda: "untrusted content" in worker.log().lower()
                 or "contentdisallowed" in worker.log().lower(), timeout=60,
                 what="the worker to refuse the pickle message", on_timeout=worker.log)
        time.sleep(1)
    finally:
        worker.stop()
    assert not marker.exists(), "a pickle payload was deserialised and executed"
