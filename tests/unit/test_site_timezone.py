"""MAMMO_SITE_TIMEZONE: a site's day is midnight to midnight on its own clocks.

Times stay UTC everywhere they are stored and shown. Cut at UTC midnight, a Sydney drop
folder's "day" batch ran from 11:00 to 11:00 local (an exam whose views arrived at 10:58
and 11:00 was split over two batches, the first summarised at 11:00 with none of its
result), and a Sydney reader's `--since 2026-12-07` at 10:58 that morning listed nothing.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from producer.watch.service import Watcher, WatchOptions
from shared.batches import summary_due_at, watch_batch_day, watch_batch_name
from shared.config import Settings, load_settings
from shared.db import clock
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.enums import Laterality, View
from shared.errors import ConfigurationError
from shared.notify import records
from shared.notify.dispatch import Notifier
from shared.queue import create_celery_app
from shared.reports.batch_data import collect_batch_summary
from shared.reports.layout import overview_rows
from shared.synthetic import synth_mammogram, write_dicom
from shared.timeutil import site_day, site_day_bounds
from tests.helpers.cli import run_cli
from tests.helpers.notify_servers import webhook_server

SYDNEY = ZoneInfo("Australia/Sydney")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_the_site_day_of_an_instant_and_its_utc_bounds() -> None:
    # 10:58 and 11:00 on 7 December in Sydney (AEDT, +11): both its 7th.
    assert site_day(_utc(2026, 12, 6, 23, 58), SYDNEY) == date(2026, 12, 7)
    assert site_day(_utc(2026, 12, 7, 0, 0), SYDNEY) == date(2026, 12, 7)
    assert site_day(datetime(2026, 12, 6, 23, 58), SYDNEY) == date(2026, 12, 7)  # naive: UTC
    assert site_day_bounds(date(2026, 12, 7), SYDNEY) == (_utc(2026, 12, 6, 13),
                                                          _utc(2026, 12, 7, 13))
    # 16:30 on 7 December in Los Angeles (PST, -8) is already the 8th in UTC.
    assert site_day(_utc(2026, 12, 8, 0, 30), LOS_ANGELES) == date(2026, 12, 7)
    assert site_day_bounds(date(2026, 12, 7), LOS_ANGELES) == (_utc(2026, 12, 7, 8),
                                                               _utc(2026, 12, 8, 8))
    assert site_day_bounds(date(2026, 12, 7), UTC) == (_utc(2026, 12, 7), _utc(2026, 12, 8))


@pytest.mark.parametrize(("zone", "day", "start", "end"), [
    (SYDNEY, date(2026, 10, 4), _utc(2026, 10, 3, 14), _utc(2026, 10, 4, 13)),  # 23 h
    (SYDNEY, date(2026, 4, 5), _utc(2026, 4, 4, 13), _utc(2026, 4, 5, 14)),  # 25 h
    (LOS_ANGELES, date(2026, 3, 8), _utc(2026, 3, 8, 8), _utc(2026, 3, 9, 7)),  # 23 h
    (LOS_ANGELES, date(2026, 11, 1), _utc(2026, 11, 1, 7), _utc(2026, 11, 2, 8)),  # 25 h
])
def test_a_day_on_which_clocks_change_is_cut_at_its_own_midnights(
        zone: ZoneInfo, day: date, start: datetime, end: datetime) -> None:
    assert site_day_bounds(day, zone) == (start, end)
    second = timedelta(seconds=1)
    assert site_day(start, zone) == site_day(end - second, zone) == day
    assert site_day(start - second, zone) == day - timedelta(days=1)
    assert site_day(end, zone) == day + timedelta(days=1)
    # The day's batch is summarised at its end, however long the day was.
    name = watch_batch_name(Path("/in"), day)
    assert summary_due_at(name, start + second, zone) == end
    assert summary_due_at(name, end + second, zone) == end + second  # finished after it


def test_a_day_batch_is_due_at_the_end_of_the_sites_day() -> None:
    name = watch_batch_name(Path("/in"), date(2026, 12, 7))
    # Sydney: its queue drained at 11:00 local; the day ends at 13:00 UTC, not 00:00 UTC.
    assert summary_due_at(name, _utc(2026, 12, 7, 0, 0), SYDNEY) == _utc(2026, 12, 7, 13)
    # Los Angeles: at 16:00 local it is UTC's midnight; the day ends at 08:00 UTC.
    assert summary_due_at(name, _utc(2026, 12, 8, 0, 0), LOS_ANGELES) == _utc(2026, 12, 8, 8)
    assert summary_due_at("night-24", _utc(2026, 12, 8), SYDNEY) == _utc(2026, 12, 8)
    assert summary_due_at(name, _utc(2026, 12, 7, 7, 30)) == _utc(2026, 12, 8)  # UTC default


def test_the_setting_is_a_known_zone_checked_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMMO_SITE_TIMEZONE", raising=False)
    assert load_settings(_env_file=None).site_zone == ZoneInfo("UTC")  # nothing changes
    monkeypatch.setenv("MAMMO_SITE_TIMEZONE", " ")  # docker-compose's ${VAR:-}
    assert load_settings(_env_file=None).site_timezone == "UTC"
    monkeypatch.setenv("MAMMO_SITE_TIMEZONE", "Australia/Sydney")
    assert load_settings(_env_file=None).site_zone == SYDNEY
    for wrong in ("Sydney", "Mars/Base", "../etc", "/etc/localtime"):
        monkeypatch.setenv("MAMMO_SITE_TIMEZONE", wrong)
        with pytest.raises(ConfigurationError,
                           match=r"MAMMO_SITE_TIMEZONE .*is not a time zone.*IANA name"):
            load_settings(_env_file=None)


# --- The Sydney morning's exam, through the watcher, the notifier and `mammo results` ---

def _view(path: Path, n: int, laterality: Laterality) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(n), size=(96, 80))
    return write_dicom(path, pixels, study_uid="1.2.7", sop_uid=f"1.2.7.{n}",
                       laterality=laterality, view=View.CC)


@pytest.fixture
def sydney_morning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[Settings, sessionmaker[Session], Path]:
    """An exam's two views dropped at 10:58 and 11:00 on 7 December in Sydney (23:58 and
    00:00 UTC), each registered by the watcher at that time on the database's clock."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'site.db'}", broker_url=None,
                        site_timezone="Australia/Sydney", watch_quiet_period_s=0.0,
                        patient_id_key=SecretStr("unit-test-key-0123456789abcdef"),
                        report_dir=tmp_path / "reports", _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    root = tmp_path / "in"
    root.mkdir()
    watcher = Watcher(settings, sessions, create_celery_app(settings.embedded()),
                      WatchOptions(root))
    for n, (now, side) in enumerate([(_utc(2026, 12, 6, 23, 58), Laterality.LEFT),
                                     (_utc(2026, 12, 7, 0, 0), Laterality.RIGHT)]):
        # SQLite's clock is this process's, read by database_now.
        monkeypatch.setattr(clock, "utcnow", lambda now=now: now)
        _view(root / f"view{n}.dcm", n, side)
        watcher.scan()
        watcher.queue_ready(threading.Event())
    return settings, sessions, root


def test_the_sydney_morning_exam_stays_in_one_day_batch(
        sydney_morning: tuple[Settings, sessionmaker[Session], Path]) -> None:
    settings, sessions, root = sydney_morning
    with sessions() as session:
        images = session.execute(select(Image.id, Image.batch_id)).all()
        batches = session.execute(select(Batch.id, Batch.name)).all()
    assert len(images) == 2
    assert [name for _, name in batches] == [f"watch:{root}:2026-12-07"]
    assert {batch for _, batch in images} == {batches[0].id}
    batch_id, name = batches[0]
    # Finished at 11:00 local: its summary waits for the end of the Sydney day.
    finished = _utc(2026, 12, 7, 0, 1)
    assert summary_due_at(name, finished, settings.site_zone) == _utc(2026, 12, 7, 13)
    assert watch_batch_day(name) == date(2026, 12, 7)
    # The notifier's follow-up owes it only once that day is over.
    with sessions() as session:
        session.get_one(Batch, batch_id).finished_at = finished
        session.commit()
        since = finished - timedelta(hours=1)
        for now, owed in ((_utc(2026, 12, 7, 12, 59), []), (_utc(2026, 12, 7, 13, 1), [batch_id])):
            assert records.owed(session, "email", since=since, now=now, alert_threshold=10,
                                zone=settings.site_zone) == (owed, []), now
        # Its summary says which day that is, and what it is in UTC.
        summary = collect_batch_summary(session, batch_id, report_dir=settings.report_dir,
                                        zone=settings.site_zone)
    expected = "2026-12-07 (Australia/Sydney): 2026-12-06 13:00 to 2026-12-07 13:00 UTC"
    assert summary.period == expected
    assert ("day covered", expected) in overview_rows(summary)


def test_the_notifier_sends_the_day_summary_once_the_sydney_day_is_over(
        sydney_morning: tuple[Settings, sessionmaker[Session], Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions, _ = sydney_morning
    with sessions() as session:
        batch = session.execute(select(Batch)).scalar_one()
        batch.finished_at = _utc(2026, 12, 7, 0, 1)  # its queue drained at 11:01 local
        session.commit()
        batch_id = batch.id
    secret = "site-zone-webhook-secret"
    with webhook_server(secret) as hook:
        notifier = Notifier(Settings(_env_file=None, **{  # type: ignore[call-arg]
            **settings.model_dump(), "webhook_url": hook.url, "webhook_secret": secret}),
            sessions)
        # 11:01 and 23:59 local, 7 December: the site's day is not over, whatever UTC says.
        for now in (_utc(2026, 12, 7, 0, 1), _utc(2026, 12, 7, 12, 59)):
            monkeypatch.setattr(clock, "utcnow", lambda now=now: now)
            notifier.batches_finished([batch_id])
            notifier.follow_up()
            assert hook.accepted == [], now
        monkeypatch.setattr(clock, "utcnow", lambda: _utc(2026, 12, 7, 13, 1))
        report = notifier.follow_up()  # 00:01 on the 8th in Sydney
    assert report.owed_batches == 1
    assert [(p["event"], p["batch_id"]) for p in hook.accepted] == [
        ("batch_complete", batch_id)]


def test_since_a_date_is_that_day_at_the_site(
        sydney_morning: tuple[Settings, sessionmaker[Session], Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, _, _ = sydney_morning

    def listed(*args: str, **env: str) -> tuple[list[str], str]:
        result = run_cli(["results", *args, "--format", "json"], monkeypatch, tmp_path,
                         database_url=settings.database_url, **env)
        assert result.exit_code == 0, result.output
        return sorted(Path(r["source"]).name for r in json.loads(result.stdout)), result.stderr

    sydney = {"site_timezone": "Australia/Sydney"}
    # The Sydney reader's 7 December holds both views (registered 10:58 and 11:00 local).
    assert listed("--since", "2026-12-07", "--until", "2026-12-08", **sydney)[0] == [
        "view0.dcm", "view1.dcm"]
    assert listed("--since", "2026-12-07T10:59", **sydney)[0] == ["view1.dcm"]
    assert listed("--until", "2026-12-07T11:00", **sydney)[0] == ["view0.dcm"]
    # An offset still says which clock a time is on; unset, a date is UTC's, as before.
    assert listed("--since", "2026-12-07T00:00Z", **sydney)[0] == ["view1.dcm"]
    assert listed("--since", "2026-12-07")[0] == ["view1.dcm"]


def test_a_since_still_to_come_is_said_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for command in (["results"], ["worklist"]):
        result = run_cli([*command, "--since", "2099-01-01", "--format", "json"], monkeypatch,
                         tmp_path, database_url=url, site_timezone="Australia/Sydney")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == []
        note = [line for line in result.stderr.splitlines() if "--since" in line]
        assert len(note) == 1 and "2098-12-31 13:00:00 UTC" in note[0], result.stderr
        assert "still to come" in note[0] and "Australia/Sydney" in note[0]
    # A --since in the past says nothing.
    result = run_cli(["results", "--since", "2001-01-01", "--format", "json"], monkeypatch,
                     tmp_path, database_url=url, site_timezone="Australia/Sydney")
    assert result.exit_code == 0 and "--since" not in result.stderr, result.output
