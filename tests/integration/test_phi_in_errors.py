"""Database errors and task events carry no header values: real PostgreSQL, real Redis.

PostgreSQL quotes the row it refused in its DETAIL ("Failing row contains (1, <study UID>,
ACC-..., 20000101, p-..., ...)", "Key (accession_number)=(ACC-...) already exists") and a
data exception quotes the value in its first line; SQLAlchemy adds the statement's
parameters. That text reached the worker's log, the task-failed event Celery publishes on
the broker, and the traceback of `mammo submit` (exit 1) when the database refused writes.
"""

from __future__ import annotations

import base64
import json
import threading
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from sqlalchemy import make_url, text
from sqlalchemy.exc import DataError, IntegrityError

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine
from shared.enums import Laterality, View
from shared.queue import EXCEPTION_LEFT_OUT, create_celery_app
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.cli import run_cli
from tests.helpers.processes import WorkerProcess, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration

ACCESSION = "ACC-PHI-4455"
PATIENT_ID = "PHI-ID-778899"
KEY = "phi-test-key-0123456789abcdef"
STUDY_UID = "1.2.826.0.1.3680043.8.498.4455"
# What must never be shown: the header's values, PostgreSQL's quote of a row or key, and
# SQLAlchemy's parameters.
NEVER_SHOWN = (ACCESSION, PATIENT_ID, "Failing row contains", "DETAIL", "Key (",
               "[parameters:", "portal parameter")


def _leaks(shown: str, *values: str | None) -> list[str]:
    return [value for value in (*NEVER_SHOWN, *values) if value and value in shown]


def _dicom(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(3), size=(96, 80))
    return write_dicom(folder / "scan.dcm", pixels, study_uid=STUDY_UID,
                       sop_uid=f"{STUDY_UID}.1", laterality=Laterality.LEFT, view=View.CC,
                       patient_id=PATIENT_ID, accession=ACCESSION)


def _admin(url: str) -> psycopg.Connection:
    database = make_url(url).database
    return psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={database}",
                           autocommit=True)


@pytest.mark.parametrize("statement, params, kind, sqlstate, named", [
    ("INSERT INTO phi (id, accession) VALUES (2, :a)", {"a": ACCESSION}, IntegrityError,
     "23505", 'unique constraint "phi_accession_key"'),
    ("INSERT INTO phi (id, accession, seq) VALUES (3, :a, 5)", {"a": ACCESSION + "x"},
     IntegrityError, "23514", 'check constraint "phi_seq_check"'),
    ("INSERT INTO phi (id, accession, day) VALUES (4, 'x', :d)", {"d": ACCESSION},
     DataError, "22007", "invalid input syntax for type date"),
])
def test_a_refused_statement_keeps_its_type_and_loses_the_values(
        postgres_url: str, statement: str, params: dict[str, str], kind: type[Exception],
        sqlstate: str, named: str) -> None:
    engine = create_db_engine(Settings(database_url=postgres_url, _env_file=None))  # type: ignore[call-arg]
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE phi (id int PRIMARY KEY, accession text UNIQUE, "
                              "seq int DEFAULT 0 CHECK (seq = 0), day date)"))
            conn.execute(text("INSERT INTO phi (id, accession) VALUES (1, :a)"), {"a": ACCESSION})
        with pytest.raises(kind) as caught, engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()
    exc = caught.value
    shown = "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])
    assert named in str(exc).splitlines()[0]
    assert _leaks(shown) == [], shown
    # What code inspects is whole: the driver's exception, its SQLSTATE and its detail.
    orig = exc.orig  # type: ignore[attr-defined]
    assert isinstance(orig, psycopg.Error) and orig.sqlstate == sqlstate
    if sqlstate.startswith("23"):
        assert ACCESSION in (orig.diag.message_detail or "")


@pytest.mark.parametrize("refusal, says", [
    ("REVOKE INSERT ON studies FROM {role}", "permission denied for table studies"),
    ("ALTER ROLE {role} SET default_transaction_read_only = on",
     "cannot execute INSERT in a read-only transaction"),
])
def test_submit_refused_by_the_database_exits_7_in_one_line(
        postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        refusal: str, says: str) -> None:
    # A grant missed after migrating as another role, or a read-only standby: exit 1 and a
    # traceback whose [parameters: ...] held the accession number, date and pseudonym.
    env = mammo_env(database_url=postgres_url, broker_url=redis_url)
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    role = f"mammo_phi_{uuid.uuid4().hex[:8]}"
    with _admin(postgres_url) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}; "
                     f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; "
                     f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        conn.execute(refusal.format(role=role))
    try:
        url = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        result = run_cli(["submit", str(_dicom(tmp_path / "in"))], monkeypatch, tmp_path,
                         database_url=url, broker_url=redis_url, patient_id_key=KEY)
    finally:
        with _admin(postgres_url) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: The database at "), result.stderr
    assert f"refused the operation: {says}" in lines[0] and "work already stored is kept" \
        in lines[0]
    assert "Traceback" not in result.output and _leaks(result.output) == [], result.output


class _Events:
    """The Celery events published on one Redis database, decoded, as they come."""

    def __init__(self, redis_url: str) -> None:
        db = int(make_url(redis_url).database or 0)
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        self._pubsub.psubscribe(f"/{db}.celeryev/*")
        self.seen: list[dict[str, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.5)
            if message and message["type"] == "pmessage":
                body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
                # A worker sends its task events in batches (a list), others one by one.
                self.seen.extend(body if isinstance(body, list) else [body])

    def of_type(self, kind: str) -> list[dict[str, object]]:
        return [event for event in list(self.seen) if event.get("type") == kind]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()


@pytest.fixture
def events(redis_url: str) -> Iterator[_Events]:
    listening = _Events(redis_url)
    yield listening
    listening.close()


def test_task_failed_events_carry_the_exception_type_alone(
        redis_url: str, events: _Events) -> None:
    # What the worker's MainProcess sends for a failed chunk (celery.worker.request).
    app = create_celery_app(Settings(broker_url=redis_url, _env_file=None))  # type: ignore[call-arg]
    try:
        with app.events.default_dispatcher(hostname="celery@phi") as dispatcher:
            dispatcher.send("task-failed", uuid="t-1", exception=(
                "IntegrityError('(psycopg.errors.CheckViolation) new row ...\\nDETAIL:  "
                f"Failing row contains (1, {ACCESSION})')"),
                traceback=f"Traceback (most recent call last):\n  ...{ACCESSION}")
            dispatcher.send("task-retried", uuid="t-2", exception=f"OSError('/data/{PATIENT_ID}')",
                            traceback=f"... /data/{PATIENT_ID}")
            dispatcher.send("task-received", uuid="t-3", name="mammo.process_chunk")
        wait_for(lambda: len(events.seen) >= 3, timeout=10, what="the three events")
    finally:
        app.close()
    failed, = events.of_type("task-failed")
    retried, = events.of_type("task-retried")
    assert failed["exception"] == f"IntegrityError: {EXCEPTION_LEFT_OUT}"
    assert retried["exception"] == f"OSError: {EXCEPTION_LEFT_OUT}"
    assert failed["traceback"] == retried["traceback"] == EXCEPTION_LEFT_OUT
    received, = events.of_type("task-received")  # other events as they were
    assert received["name"] == "mammo.process_chunk"
    assert _leaks(json.dumps(events.seen)) == []


def test_a_worker_whose_save_the_database_refuses_logs_and_publishes_no_values(
        postgres_url: str, redis_url: str, tiny_model_dir: Path, tmp_path: Path,
        events: _Events) -> None:
    # An unexpected database error inside a chunk (here a CHECK constraint; in the field a
    # schema drift or a bug): PostgreSQL's DETAIL quoted the study row in the worker's log
    # and in the task-failed event published on the broker.
    env = mammo_env(database_url=postgres_url, broker_url=redis_url, model=str(tiny_model_dir),
                    patient_id_key=KEY)
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    with _admin(postgres_url) as conn:
        conn.execute("ALTER TABLE studies ADD CONSTRAINT phi_probe CHECK (exam_inputs_seq = 0)")
    submitted = run_mammo(["submit", str(_dicom(tmp_path / "in"))], env, tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    with _admin(postgres_url) as conn:
        row = conn.execute("SELECT patient_pseudonym, study_date FROM studies").fetchone()
    assert row is not None
    pseudonym, study_date = row
    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "1")
    try:
        wait_for(lambda: 'violates check constraint "phi_probe"' in worker.log(), timeout=300,
                 what="the worker to meet the constraint", on_timeout=worker.log)
        wait_for(lambda: bool(events.of_type("task-failed")), timeout=60,
                 what="the chunk's task-failed event", on_timeout=worker.log)
    finally:
        worker.stop()
    log = worker.log()
    assert _leaks(log, pseudonym, study_date) == [], log
    published = json.dumps(events.seen)
    assert _leaks(published, pseudonym, study_date, 'violates check constraint') == [], \
        published
    failed = events.of_type("task-failed")[0]
    assert str(failed["exception"]).startswith("IntegrityError: ")
