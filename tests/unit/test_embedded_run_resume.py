"""An embedded run that finds images another process claimed: it waits, says so, and takes
them over once their lease has passed (a killed run never gives them back)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.embedded_run import run_embedded
from producer.registration import create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Priority
from shared.recovery import held_claims
from shared.synthetic import make_exam_set
from shared.timeutil import utcnow
from tests.helpers.cli import invoke_cli


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


@pytest.mark.timeout(90)  # before the fix it waited for ever
def test_a_run_takes_over_the_images_a_killed_run_left_claimed(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"claim_heartbeat_s": 1})  # a lease of 4 s
    files = make_exam_set(tmp_path / "night", n_exams=2, seed=6)
    batch = create_batch(sessions, name="killed", priority=Priority.ROUTINE, mode="embedded")
    ids = register_files(sessions, batch, files).new_ids
    with sessions() as session:  # the killed run's chunk in hand: claimed, never renewed
        lifecycle.claim(session, ids[:4], token="a-killed-run", lease_s=settings.claim_lease_s)
    with caplog.at_level(logging.WARNING, logger="producer.embedded_run"):
        outcome = run_embedded(settings, sessions, [tmp_path / "night"], name="again")
    assert sorted(outcome.submission.requeued) == sorted(ids)
    with sessions() as session:
        assert set(session.scalars(select(Image.state))) == {"done"}
    said = caplog.text
    assert "waiting for 4 image(s) claimed by another process" in said
    assert "until their lease ends at " in said
    assert "took over 4 image(s) whose claim's lease ended" in said


def _claimed_night(sessions: sessionmaker[Session], tmp_path: Path, *,
                   claimed_s_ago: float) -> list[int]:
    """8 queued images, the first 4 claimed ``claimed_s_ago`` by a run that was killed."""
    files = make_exam_set(tmp_path / "night", n_exams=2, seed=6, fmt="png")
    batch = create_batch(sessions, name="killed", priority=Priority.ROUTINE, mode="embedded")
    ids = register_files(sessions, batch, files).new_ids
    with sessions() as session:
        lifecycle.claim(session, ids[:4], token="a-killed-run", lease_s=4)
        session.execute(update(Image).where(Image.id.in_(ids[:4])).values(
            claimed_at=utcnow() - timedelta(seconds=claimed_s_ago)))
        session.commit()
    return ids


def _recover(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings,
             *args: str) -> tuple[int, str]:
    return invoke_cli(["recover", *args], monkeypatch, tmp_path,
                      database_url=settings.database_url, model=settings.model,
                      claim_heartbeat_s="1", chunk_size="4")  # a lease of 4 s


def _states(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Image.state)))


@pytest.mark.timeout(120)
def test_recover_waits_for_images_a_killed_run_still_holds_under_its_lease(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    _claimed_night(sessions, tmp_path, claimed_s_ago=0)
    code, out = _recover(monkeypatch, tmp_path, settings, "--dry-run")
    assert code == ExitCode.OK, out
    assert "8 image(s) to recover (4 queued, 4 claimed) (dry run)" in out
    assert "4 image(s) claimed by another process" in out and "until their lease ends" in out
    with caplog.at_level(logging.WARNING, logger="producer.embedded_run"):
        code, out = _recover(monkeypatch, tmp_path, settings)
    assert code == ExitCode.OK, out
    assert "processed 8 recovered image(s)" in out
    assert _states(sessions) == {"done"}  # none left for a second recover to find
    assert "waiting for 4 image(s) claimed by another process" in caplog.text
    assert "took over 4 image(s) whose claim's lease ended" in caplog.text


@pytest.mark.timeout(120)
def test_recover_takes_over_expired_claims_at_once_and_names_no_past_lease(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    ids = _claimed_night(sessions, tmp_path, claimed_s_ago=60)
    with sessions() as session:
        assert held_claims(session, settings.model_copy(
            update={"claim_heartbeat_s": 1}), ids).count == 0
    (tmp_path / "night" / "exam0001_RCC.png").write_bytes(b"not a png any more")
    with caplog.at_level(logging.INFO, logger="producer.embedded_run"):
        code, out = _recover(monkeypatch, tmp_path, settings)
    assert "waiting for" not in caplog.text and "until their lease ends" not in out
    assert "took over 4 image(s) whose claim's lease ended" in caplog.text
    # The job ran, but an image failed: not the exit status of "all is well".
    assert code == ExitCode.IMAGES_FAILED, out
    assert "processed 8 recovered image(s) with the embedded worker; 1 failed" in out
    assert _states(sessions) == {"done", "failed"}


def _live_run_holding(sessions: sessionmaker[Session], held: list[int],
                      others: list[int]) -> threading.Thread:
    """A live run beside recover: it keeps its claim on ``held`` renewed and finishes them
    once recover has finished ``others`` (so recover must have waited for them)."""

    def live() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with sessions() as session:
                lifecycle.renew(session, "a-live-run")
                session.commit()
                left = session.scalar(select(func.count()).select_from(Image).where(
                    Image.id.in_(others), Image.state.not_in(["done", "failed"])))
            if left == 0:
                with sessions() as session:
                    lifecycle.mark_done(session, held, token="a-live-run")
                    session.commit()
                return
            time.sleep(0.2)

    return threading.Thread(target=live, daemon=True)


@pytest.mark.timeout(120)
def test_recover_beside_a_live_run_counts_what_it_finished_and_keeps_celery_quiet(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    files = make_exam_set(tmp_path / "night", n_exams=2, seed=6, fmt="png")
    batch = create_batch(sessions, name="live", priority=Priority.ROUTINE, mode="embedded")
    ids = register_files(sessions, batch, files).new_ids
    with sessions() as session:  # the live run's chunk in hand
        lifecycle.claim(session, ids[:4], token="a-live-run", lease_s=4)
    live = _live_run_holding(sessions, ids[:4], ids[4:])
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="celery")  # as at `mammo --log-level INFO`
    live.start()
    code, out = _recover(monkeypatch, tmp_path, settings)
    live.join(timeout=10)
    assert code == ExitCode.OK, out
    assert _states(sessions) == {"done"}
    # Recover ran 4; the live run finished its 4 while recover waited for them.
    assert ("processed 4 recovered image(s) with the embedded worker; 4 more finished by "
            "another process meanwhile") in out
    # `mammo run` keeps the worker's INFO chatter (task received, succeeded) off the
    # terminal: recover's embedded worker shares it just the same.
    chatter = [r.getMessage() for r in caplog.records
               if r.name.startswith(("celery", "kombu")) and r.levelno < logging.WARNING]
    assert chatter == []
