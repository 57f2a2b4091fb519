"""What a real worker and watcher log, on a host whose zone is not UTC.

Log times were the host's, unlabelled: a Los Angeles worker logged "2026-12-06 02:40:18"
for an event `mammo status` showed at 10:40 UTC, and Celery's own lines ("[... ERROR/
MainProcess] Process 'ForkPoolWorker-1' ... exited with 'signal 9 (SIGKILL)'") had a format
of their own. Every line is now "2026-12-06 10:40:18,123Z LEVEL logger: message".

And at every midnight each worker logged the drop folder's day summary, which its
follow-up sends by design, as "WARNING worker.sweeper: follow-up: ... 1 batch summary(ies)
... were owed; ..., 0 delivered": it is one INFO line now.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import watch_batch_name
from shared.config import Settings
from shared.db.schema import Batch, Image
from tests.helpers.db import queued_batch, schema_sessions
from tests.helpers.notify_servers import webhook_server
from tests.helpers.processes import WatchProcess, WorkerProcess, mammo_env

pytestmark = pytest.mark.integration

SECRET = "log-lines-webhook-secret-not-real"
ZONE = "America/Los_Angeles"  # 8 hours behind UTC in December, 7 in summer: never UTC
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3}Z [A-Z]+ \S+: ")
STAMPED = re.compile(r"^\[?\d{4}-\d\d-\d\d")  # any line that starts with a date


@pytest.fixture
def sessions(settings: Settings, postgres_url: str) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings.model_copy(update={"database_url": postgres_url}))


def _day_batch_of_yesterday(sessions: sessionmaker[Session]) -> int:
    """Yesterday's (UTC) drop-folder batch, done at 23:00: its summary fell due at midnight,
    for the sweeper's follow-up to send."""
    midnight = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    name = watch_batch_name(Path("/srv/incoming"), (midnight - timedelta(days=1)).date())
    batch_id, _ = queued_batch(sessions, name, 2)
    with sessions() as session:
        session.execute(update(Image).where(Image.batch_id == batch_id).values(state="done"))
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(finished_at=midnight - timedelta(hours=1)))
        session.commit()
    return batch_id


def _assert_utc_stamps(log: str, *, started: datetime) -> None:
    """Every line that starts with a time has the one format, in UTC: between the start and
    now (a Los Angeles time would be 7 or 8 hours earlier)."""
    stamped = [line for line in log.splitlines() if STAMPED.match(line)]
    assert stamped, log
    for line in stamped:
        match = STAMP.match(line)
        assert match, line
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert started - timedelta(seconds=1) <= at <= datetime.now(UTC), line


def test_a_worker_logs_utc_and_its_day_summary_as_one_info_line(
        sessions: sessionmaker[Session], postgres_url: str, redis_url: str,
        tiny_model_dir: Path, tmp_path: Path) -> None:
    batch_id = _day_batch_of_yesterday(sessions)
    started = datetime.now(UTC)
    with webhook_server(SECRET) as hook:
        env = mammo_env(database_url=postgres_url, broker_url=redis_url,
                        model=str(tiny_model_dir), webhook_url=hook.url, webhook_secret=SECRET,
                        sweep_interval_s="1", log_level="INFO",
                        report_dir=str(tmp_path / "reports")) | {"TZ": ZONE}
        worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log")
        try:
            worker.wait_for_log("follow-up: ", timeout=180)
            worker.wait_for_log("started (decoders and model loaded)", timeout=180)
            child = int(re.findall(r"worker child (\d+) started", worker.log())[0])
            os.kill(child, signal.SIGKILL)  # Celery's own handler says so
            worker.wait_for_log("exited with 'signal 9 (SIGKILL)'", timeout=60)
        finally:
            worker.stop()
    log = worker.log()

    assert [p["batch_id"] for p in hook.accepted] == [batch_id]
    assert (f"INFO worker.sweeper: follow-up: notifications: day summary of batch {batch_id} "
            "sent\n") in log, log
    assert "WARNING worker.sweeper: follow-up" not in log, log
    assert re.search(r"Z ERROR multiprocessing: Process 'ForkPoolWorker-1' pid:\d+ exited", log)
    _assert_utc_stamps(log, started=started)


def test_the_watcher_logs_utc(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'mammo.db'}",
                    model=str(tiny_model_dir), log_level="INFO") | {"TZ": ZONE}
    started = datetime.now(UTC)
    watcher = WatchProcess(env, tmp_path, tmp_path / "incoming")
    try:
        watcher.wait_for_log("INFO mammo.watch: watching ", timeout=120)
    finally:
        assert watcher.stop() == 0
    _assert_utc_stamps(watcher.log(), started=started)


def test_the_host_zone_is_not_utc_where_these_tests_run() -> None:
    """Else the two above could not tell a UTC time from a local one."""
    offset = subprocess.run(["date", "+%z"], env={**os.environ, "TZ": ZONE},
                            capture_output=True, text=True, check=True).stdout.strip()
    assert offset in {"-0800", "-0700"}
