"""`mammo status`'s "workers scored in the last 10 min" after the clock stepped back.

A SQLite host stamps predictions on its own clock. Running two hours fast, then set right
(NTP, a dead CMOS battery fixed), it left predictions stamped two hours into the future:
``workers_seen`` had no upper bound, so a worker killed meanwhile was listed as scoring
for those two hours. A stamp ahead of the database's time by more than a small tolerance is
not "lately" any more; one a few seconds ahead (committed after ``now`` was read) still is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Prediction
from shared.imaging.reader_version import READER_VERSION
from shared.queries import workers_seen
from tests.helpers.cli import invoke_cli
from tests.helpers.seed_results import seed_results


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'seen.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    """16 scored images: 1-8 by a worker killed while the clock ran 2 h fast, 9-16 by one
    scoring now, the last of them stamped ``ahead`` of now (by the test)."""
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    ensure_schema(engine)
    seed_results(engine, 16, n_batches=2, seed=3)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(update(Prediction).values(worker="celery@live",
                                               created_at=now - timedelta(minutes=1),
                                               reader_version=READER_VERSION))
        conn.execute(update(Prediction).where(Prediction.image_id <= 8)
                     .values(worker="celery@dead", created_at=now + timedelta(hours=2)))
    yield engine
    engine.dispose()


def _seen(engine: Engine) -> list[str]:
    with make_session_factory(engine)() as session:
        return [str(w["worker"]) for w in workers_seen(session)]


def test_predictions_stamped_hours_ahead_keep_no_dead_worker_listed(engine: Engine) -> None:
    assert _seen(engine) == ["celery@live"]


def test_a_stamp_a_moment_ahead_still_counts(engine: Engine) -> None:
    """Committed after `mammo status` read the time, or a clock a few seconds off."""
    moment = datetime.now(UTC) + timedelta(seconds=20)
    with engine.begin() as conn:
        conn.execute(update(Prediction).where(Prediction.image_id <= 8)
                     .values(created_at=moment))
    assert _seen(engine) == ["celery@dead", "celery@live"]


def test_mammo_status_lists_only_the_worker_scoring_now(
        engine: Engine, url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                           database_url=url, report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    seen = json.loads(out)[0]["workers_scored_10min"]
    assert seen.startswith("celery@live (8, ") and "celery@dead" not in seen, seen
