"""Security properties with real processes: JSON-only messages, no pickle execution."""

from __future__ import annotations

import pickle
import subprocess
import time
from pathlib import Path

import pytest
from kombu import Exchange, Producer, Queue

from shared.config import Settings
from shared.queue import QUEUE_NAME, TASK_PROCESS_CHUNK, create_celery_app
from tests.helpers.processes import WorkerProcess, mammo_env, wait_for
from tests.helpers.reliability import Evidence

pytestmark = pytest.mark.integration


class _Exploit:
    """Unpickling this creates a file: proof that untrusted bytes were executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_message_is_refused_and_never_executed(
    tmp_path: Path, redis_url: str, sqlite_url: str, tiny_model_dir: Path,
    reliability: Evidence,
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
    reliability.check("a pickle-serialised task message is refused; its payload never runs")


PATIENT_NAME = "Zeppelin^Ottoline^Quixote"
PATIENT_ID = "PID-9876-XQZ"


def test_no_patient_data_in_broker_messages_or_logs(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    import numpy as np
    import pydicom

    from shared.enums import Laterality, View
    from shared.synthetic import synth_mammogram, write_dicom
    from tests.helpers.db import tally
    from tests.helpers.processes import run_mammo

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (lat, view) in enumerate([(Laterality.LEFT, View.CC), (Laterality.RIGHT, View.MLO)]):
        path = write_dicom(folder / f"{i}.dcm", synth_mammogram(rng, laterality=lat),
                           study_uid="1.2.826.0.1.3680043.9.77.1",
                           sop_uid=f"1.2.826.0.1.3680043.9.77.1.{i}", laterality=lat, view=view,
                           patient_id=PATIENT_ID)
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientBirthDate = "19510101"
        ds.save_as(path)

    monitor_log = tmp_path / "monitor.txt"
    host_port = redis_url.split("//")[1].split("/", maxsplit=1)[0]
    host, port = host_port.split(":")
    monitor = subprocess.Popen(["redis-cli", "-h", host, "-p", port, "monitor"],
                               stdout=monitor_log.open("w"), stderr=subprocess.STDOUT)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    patient_id_key="test-key-not-a-real-secret", log_level="DEBUG")
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1",
                           "--loglevel", "DEBUG")
    try:
        submitted = run_mammo(["submit", str(folder)], env, tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        wait_for(lambda: tally(postgres_url).done == 2, timeout=120, what="both images",
                 on_timeout=worker.log)
        results = run_mammo(["results", "--format", "json"], env, tmp_path)
    finally:
        worker.stop()
        monitor.terminate()
        monitor.wait(timeout=10)
    captured = {
        "broker traffic": monitor_log.read_text(errors="replace"),
        "worker log": worker.log(),
        "producer output": submitted.stdout + submitted.stderr,
        "results": results.stdout,
    }
    assert "LPUSH" in captured["broker traffic"] or "lpush" in captured["broker traffic"]
    for where, text in captured.items():
        for secret in (PATIENT_ID, "Zeppelin", "Ottoline", "19510101"):
            assert secret not in text, f"{secret!r} leaked into the {where}"
    reliability.check("a known patient name, ID and birth date appear in no broker message, "
                      "log, producer output or result", outputs=sorted(captured))
