"""Notifications fired by the worker pipeline, delivered to real local servers, recorded in
the database exactly once; a dead mail server or webhook never fails the batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.embedded_run import run_embedded
from producer.registration import create_batch, register_files
from producer.watch.identity import RegisteredFiles
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import (
    Batch,
    ExamResult,
    Image,
    ModelVersion,
    Notification,
    Prediction,
    Study,
)
from shared.enums import Priority
from shared.notify import Notifier
from shared.notify.content import batch_notice
from shared.synthetic import make_exam_set, synth_mammogram, write_png
from tests.helpers.notify_servers import HOST, SmtpInbox, free_port, smtp_server, webhook_server
from worker.pipeline import process_chunk
from worker.runtime import WorkerRuntime

SECRET = "pipeline-webhook-secret"
PASSWORD = "pipeline-smtp-password"


def _with_notifications(settings: Settings, smtp_port: int, webhook_url: str,
                        **extra: object) -> Settings:
    # Built anew, not model_copy: the notification settings must pass validation.
    return Settings(_env_file=None, **{  # type: ignore[call-arg]
        **settings.model_dump(),
        "smtp_host": HOST, "smtp_port": smtp_port, "smtp_security": "none",
        "smtp_from": "mammo@example.org", "smtp_to": ["reader@example.org"],
        "webhook_url": webhook_url, "webhook_secret": SECRET, "alert_suspicion": 1,
        "notify_timeout_s": 2.0, **extra,
    })


def _sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _worker_scores(settings: Settings, ids: list[int]) -> None:
    """One chunk as a worker process scores it, then the process's stop: its notification
    threads deliver what the chunk handed them before a test reads the inboxes."""
    runtime = WorkerRuntime(settings)
    process_chunk(ids, token="t", runtime=runtime)
    runtime.close()


def _incomplete_exam(settings: Settings, tmp_path: Path, seed: int) -> sessionmaker[Session]:
    """2 of an exam's 4 views processed by a worker: its result waits for the timeout."""
    sessions = _sessions(settings)
    batch = create_batch(sessions, name=None, priority=Priority.ROUTINE, mode="test")
    files = make_exam_set(tmp_path / "in", 1, seed=seed)[:2]
    _worker_scores(settings, register_files(sessions, batch, files).new_ids)
    return sessions


def _processed_without_channels(settings: Settings, tmp_path: Path,
                                seed: int) -> sessionmaker[Session]:
    """One exam processed with no notification channel configured: nothing claimed."""
    sessions = _sessions(settings)
    make_exam_set(tmp_path / "in", 1, seed=seed)
    run_embedded(settings, sessions, [tmp_path / "in"], name="no channels configured")
    return sessions


def _by_subject(inbox: SmtpInbox) -> dict[str, int]:
    counts: dict[str, int] = {}
    for msg in inbox.messages:
        kind = "batch" if "Batch" in msg["Subject"] else "alert"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_one_batch_email_and_one_alert_per_exam_even_when_the_hook_fires_again(
    settings: Settings, tmp_path: Path,
) -> None:
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        settings = _with_notifications(settings, mail.port, hook.url)
        sessions = _sessions(settings)
        batch = create_batch(sessions, name="night", priority=Priority.ROUTINE, mode="test")
        ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=3)).new_ids
        runtime = WorkerRuntime(settings)
        process_chunk(ids[:2], token="t1", runtime=runtime)
        runtime.close()
        assert mail.messages == []  # neither the exam nor the batch is complete yet
        process_chunk(ids[2:], token="t2", runtime=runtime)

        # The hook fires again: same process, a second "process", a redelivered chunk.
        with sessions() as s:
            study = s.execute(select(Study.id)).scalar_one()
        runtime.notifier.batches_finished([batch])
        runtime.notifier.exams_changed([study])
        Notifier(settings, _sessions(settings)).batches_finished([batch])
        process_chunk(ids[2:], token="t2", runtime=runtime)
        runtime.close()

    assert _by_subject(mail) == {"batch": 1, "alert": 1}
    assert sorted(p["event"] for p in hook.accepted) == ["batch_complete", "exam_alert"]
    assert hook.refused == 0
    with sessions() as s:
        rows = s.execute(select(Notification)).scalars().all()
        finished = s.get(Batch, batch)
    assert finished is not None and finished.finished_at is not None
    assert sorted((r.channel, r.event, r.status, r.attempts) for r in rows) == [
        ("email", "batch_complete", "sent", 1), ("email", "exam_alert", "sent", 1),
        ("webhook", "batch_complete", "sent", 1), ("webhook", "exam_alert", "sent", 1)]

    batch_mail = next(m for m in mail.messages if "Batch" in m["Subject"])
    text = batch_mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "4 images, 4 done, 0 failed" in text and "not a diagnosis" in text
    # A `mammo demo` batch says so in its subject and first line too, not only its alerts.
    assert batch_mail["Subject"].startswith("[mammo] SYNTHETIC TEST DATA - not a patient: ")
    assert text.startswith("SYNTHETIC TEST DATA, not patients")
    [batch_payload] = [p for p in hook.accepted if p["event"] == "batch_complete"]
    assert batch_payload["synthetic_images"] == 4
    assert "Images by predicted class:" in text
    [page] = list(batch_mail.iter_attachments())
    html = page.get_content()
    assert page.get_content_type() == "text/html" and "data:image/png;base64," in html
    written = (settings.report_dir / page.get_filename()).read_text(encoding="utf-8")
    assert written == html.replace("\r\n", "\n")  # SMTP carries text with CRLF
    alert = next(m for m in mail.messages if "Suspicion" in m["Subject"])
    alert_text = alert.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Accession number: SYN000000000" in alert_text and "not a diagnosis" in alert_text
    assert "left breast: suspicion" in alert_text and "right breast: suspicion" in alert_text
    # A `mammo demo` exam says so wherever the alert goes.
    assert "SYNTHETIC TEST DATA - not a patient" in alert["Subject"]
    assert alert_text.startswith("SYNTHETIC TEST DATA - not a patient")
    [alert_payload] = [p for p in hook.accepted if p["event"] == "exam_alert"]
    assert alert_payload["synthetic"] is True


def test_below_the_threshold_no_alert_is_sent(settings: Settings, tmp_path: Path) -> None:
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        settings = _with_notifications(settings, mail.port, hook.url, alert_suspicion=10)
        sessions = _sessions(settings)
        batch = create_batch(sessions, name=None, priority=Priority.ROUTINE, mode="test")
        ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=4)).new_ids
        _worker_scores(settings, ids)
    with sessions() as s:  # the premise (tiny random model): the exam scored below 10
        [exam] = s.execute(select(ExamResult)).scalars().all()
    assert exam.suspicion is not None and exam.suspicion < 10
    assert _by_subject(mail) == {"batch": 1}
    assert [p["event"] for p in hook.accepted] == ["batch_complete"]


def test_two_notifiers_racing_on_postgresql_send_once(
    settings: Settings, postgres_url: str, tmp_path: Path,
) -> None:
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        settings = _with_notifications(settings, mail.port, hook.url, database_url=postgres_url)
        sessions = _sessions(settings)
        batch = create_batch(sessions, name="race", priority=Priority.ROUTINE, mode="test")
        ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=5)).new_ids
        with sessions() as s:  # finished, without notifying: the race is what we test
            s.execute(Image.__table__.update().where(Image.id.in_(ids)).values(state="failed",
                                                                                error_code="x"))
            s.execute(Batch.__table__.update().values(finished_at=Batch.created_at))
            s.commit()
        notifiers = [Notifier(settings, _sessions(settings)) for _ in range(4)]
        start = threading.Barrier(len(notifiers))

        def fire(notifier: Notifier) -> None:
            start.wait()
            notifier.batches_finished([batch])

        threads = [threading.Thread(target=fire, args=(n,)) for n in notifiers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(mail.messages) == 1 and len(hook.accepted) == 1


def test_dead_servers_never_fail_the_batch_and_are_recorded_failed(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    closed = free_port()  # nothing listens: connection refused at once
    settings = _with_notifications(
        settings, closed, f"http://{HOST}:{closed}/hook", smtp_security="starttls",
        smtp_user="mammo", smtp_password=PASSWORD, notify_retries=2, notify_backoff_s=0.05,
        notify_backoff_max_s=0.1)
    sessions = _sessions(settings)
    make_exam_set(tmp_path / "in", 1, seed=6)
    caplog.set_level(logging.INFO)
    outcome = run_embedded(settings, sessions, [tmp_path / "in"], name="offline")

    with sessions() as s:
        states = s.execute(select(Image.state)).scalars().all()
        batch = s.get(Batch, outcome.submission.batch_id)
        rows = s.execute(select(Notification)).scalars().all()
    assert states == ["done"] * 4
    assert batch is not None and batch.finished_at is not None
    assert sorted((r.channel, r.event) for r in rows) == [
        ("email", "batch_complete"), ("email", "exam_alert"),
        ("webhook", "batch_complete"), ("webhook", "exam_alert")]
    assert all(r.status == "failed" and r.attempts == 3 and r.last_error for r in rows)
    assert all("unreachable" in (r.last_error or "") for r in rows)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("FAILED after 3 attempt(s)" in w for w in warnings) == 4
    # The run ends saying what it leaves owed and how to send it.
    [owed] = [w for w in warnings if "notification(s) of this run" in w]
    assert owed.startswith("4 notification(s)") and "`mammo recover`" in owed
    logged = caplog.text
    assert PASSWORD not in logged and SECRET not in logged


def test_the_watcher_alerts_for_an_exam_it_scores_after_the_timeout(
    settings: Settings, tmp_path: Path,
) -> None:
    from producer.watch.actions import AfterProcessing
    from producer.watch.folder import WatchFolder
    from producer.watch.followup import FollowUp

    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        settings = _with_notifications(settings, mail.port, hook.url, exam_timeout_s=3600)
        sessions = _incomplete_exam(settings, tmp_path, seed=7)
        assert _by_subject(mail) == {"batch": 1}  # no exam result yet: views may still come
        folder = WatchFolder.of(tmp_path / "in", ())
        log = logging.getLogger("test.watch")
        actions = AfterProcessing(folder, "leave", log, RegisteredFiles())
        followup = FollowUp(sessions, folder, actions, log,
                            exam_timeout_s=0.0, notifier=Notifier(settings, sessions))
        with sessions() as s:
            study = s.execute(select(Study.id)).scalar_one()
        followup.refresh_exams({study})
        followup.refresh_exams({study})  # nothing changed: no second alert
    assert _by_subject(mail) == {"batch": 1, "alert": 1}
    alert = next(m for m in mail.messages if "Suspicion" in m["Subject"])
    text = alert.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Exam: incomplete" in text and "missing" in text
    assert sorted(p["event"] for p in hook.accepted) == ["batch_complete", "exam_alert"]


def _age_notifications(sessions: sessionmaker[Session], **ago: timedelta) -> None:
    """Move claimed_at / created_at of every notification row into the past."""
    now = datetime.now(UTC)
    with sessions() as s:
        s.execute(Notification.__table__.update().values(
            **{column: now - delta for column, delta in ago.items()}))
        s.commit()


def _failed_run(settings: Settings, tmp_path: Path, seed: int) -> sessionmaker[Session]:
    """A `mammo run` of one exam while neither the mail server nor the webhook answers."""
    closed = free_port()
    dead = _with_notifications(settings, closed, f"http://{HOST}:{closed}/hook",
                               notify_retries=0)
    sessions = _sessions(dead)
    make_exam_set(tmp_path / "in", 1, seed=seed)
    run_embedded(dead, sessions, [tmp_path / "in"], name="offline")
    with sessions() as s:
        assert {r.status for r in s.execute(select(Notification)).scalars()} == {"failed"}
    return sessions


def test_the_follow_up_delivers_failed_notifications_once_the_servers_are_back(
    settings: Settings, tmp_path: Path,
) -> None:
    sessions = _failed_run(settings, tmp_path, seed=8)
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        back = _with_notifications(settings, mail.port, hook.url)
        notifier = Notifier(back, sessions)
        early = notifier.follow_up()  # failed just now: not yet due for another try
        assert (early.retried, mail.messages) == (0, [])
        _age_notifications(sessions, claimed_at=timedelta(seconds=back.notify_resend_after_s + 1))
        report = notifier.follow_up()
        again = notifier.follow_up()
    assert (report.retried, report.delivered, report.obsolete) == (4, 4, 0)
    assert (report.owed_batches, report.owed_alerts) == (0, 0)  # recorded, only failed
    assert not again  # nothing left to do
    assert _by_subject(mail) == {"batch": 1, "alert": 1}
    assert sorted(p["event"] for p in hook.accepted) == ["batch_complete", "exam_alert"]
    with sessions() as s:
        rows = s.execute(select(Notification)).scalars().all()
    assert {(r.status, r.attempts) for r in rows} == {("sent", 2)}


def test_a_failed_alert_no_longer_called_for_is_not_sent(
    settings: Settings, tmp_path: Path,
) -> None:
    sessions = _failed_run(settings, tmp_path, seed=9)
    _age_notifications(sessions, claimed_at=timedelta(hours=1))
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        # The threshold was raised above the exam's score since the alert failed.
        report = Notifier(_with_notifications(settings, mail.port, hook.url,
                                              alert_suspicion=10), sessions).follow_up()
    with sessions() as s:
        [exam] = s.execute(select(ExamResult)).scalars().all()
        statuses = sorted((r.event, r.status) for r in s.execute(select(Notification)).scalars())
    assert exam.suspicion is not None and exam.suspicion < 10  # the premise (tiny model)
    assert (report.retried, report.delivered, report.obsolete) == (4, 2, 2)
    assert statuses == [("batch_complete", "sent"), ("batch_complete", "sent"),
                        ("exam_alert", "obsolete"), ("exam_alert", "obsolete")]
    assert _by_subject(mail) == {"batch": 1} and len(hook.accepted) == 1


def test_failures_older_than_the_give_up_window_are_left_alone(
    settings: Settings, tmp_path: Path,
) -> None:
    sessions = _failed_run(settings, tmp_path, seed=10)
    _age_notifications(sessions, claimed_at=timedelta(days=2), created_at=timedelta(days=2))
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        report = Notifier(_with_notifications(settings, mail.port, hook.url),
                          sessions).follow_up()
    assert not report and mail.messages == [] and hook.accepted == []


def test_the_follow_up_alerts_for_an_exam_that_timed_out_with_no_watcher(
    settings: Settings, tmp_path: Path,
) -> None:
    from shared.recovery import follow_up

    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        live = _with_notifications(settings, mail.port, hook.url, exam_timeout_s=3600)
        sessions = _incomplete_exam(live, tmp_path, seed=11)
        assert _by_subject(mail) == {"batch": 1}  # the views may still come
        notifier = Notifier(live, sessions)
        assert not follow_up(sessions, live, notifier)  # not due yet: nothing to do
        due = live.model_copy(update={"exam_timeout_s": 0.0})
        followed = follow_up(sessions, due, notifier)
        assert not follow_up(sessions, due, notifier)
    assert followed.exams == 1 and followed.notifications.owed_alerts == 1
    assert _by_subject(mail) == {"batch": 1, "alert": 1}
    assert sorted(p["event"] for p in hook.accepted) == ["batch_complete", "exam_alert"]


def test_the_follow_up_stamps_a_batch_a_dead_worker_left_open_and_sends_its_summary(
    settings: Settings, tmp_path: Path,
) -> None:
    from shared.recovery import follow_up

    sessions = _processed_without_channels(settings, tmp_path, seed=13)
    with sessions() as session:  # as if the worker died between saving and stamping
        batch = session.execute(select(Batch)).scalar_one()
        batch.finished_at = None
        session.commit()
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        live = _with_notifications(settings, mail.port, hook.url)
        followed = follow_up(sessions, live, Notifier(live, sessions))
        again = follow_up(sessions, live, Notifier(live, sessions))
    assert followed.batches == 1 and followed.notifications.owed_batches == 1
    assert "1 finished batch(es) stamped late" in followed.summary()
    assert not again
    assert _by_subject(mail)["batch"] == 1
    with sessions() as session:
        assert session.execute(select(Batch)).scalar_one().finished_at is not None


def test_an_event_nobody_claimed_is_owed_and_sent_once(
    settings: Settings, tmp_path: Path,
) -> None:
    # Results committed by a process that died before claiming its notifications.
    sessions = _processed_without_channels(settings, tmp_path, seed=12)
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        live = _with_notifications(settings, mail.port, hook.url)
        notifiers = [Notifier(live, sessions) for _ in range(2)]
        reports = [n.follow_up() for n in notifiers]
    assert (reports[0].owed_batches, reports[0].owed_alerts) == (1, 1)
    assert not reports[1]
    assert _by_subject(mail) == {"batch": 1, "alert": 1} and len(hook.accepted) == 2


def test_mammo_recover_follows_up_by_hand(settings: Settings, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from producer.cli.main import cli

    sessions = _incomplete_exam(settings, tmp_path, seed=13)
    env = {"MAMMO_DATABASE_URL": settings.database_url, "MAMMO_MODEL": str(settings.model),
           "MAMMO_EXAM_TIMEOUT_S": "0.001"}
    result = CliRunner().invoke(cli, ["recover"], env=env)
    assert result.exit_code == 0, result.output
    assert "0 image(s) to recover" in result.output
    assert "1 timed-out exam(s) given their result" in result.output
    with sessions() as s:
        assert [e.status for e in s.execute(select(ExamResult)).scalars()] == ["incomplete"]


def test_a_drop_folder_day_batch_is_summarised_once_its_day_is_over(
    settings: Settings, tmp_path: Path,
) -> None:
    from shared.batches import watch_batch_name

    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        live = _with_notifications(settings, mail.port, hook.url, alert_suspicion=10)
        sessions = _sessions(live)
        today = datetime.now(UTC).date()
        batch = create_batch(sessions, name=watch_batch_name(tmp_path / "in", today),
                             priority=Priority.ROUTINE, mode="test")
        ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=14)).new_ids
        _worker_scores(live, ids)
        notifier = Notifier(live, sessions)
        assert not notifier.follow_up()  # drained, but more files may come today
        assert mail.messages == [] and hook.accepted == []
        with sessions() as s:  # ... until the day is over
            s.execute(Batch.__table__.update().values(
                name=watch_batch_name(tmp_path / "in", today - timedelta(days=1))))
            s.commit()
        report = notifier.follow_up()
        assert not notifier.follow_up()
    assert report.owed_batches == 1
    assert _by_subject(mail) == {"batch": 1} and len(hook.accepted) == 1


def test_the_background_follow_up_delivers_from_its_own_thread(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from shared.recovery import BackgroundFollowUp

    sessions = _failed_run(settings, tmp_path, seed=15)  # SQLite, as `mammo watch` embedded
    _age_notifications(sessions, claimed_at=timedelta(hours=1))
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        back = _with_notifications(settings, mail.port, hook.url)
        background = BackgroundFollowUp(back, Notifier(back, sessions),
                                        logging.getLogger("test.follow-up"))
        with caplog.at_level(logging.WARNING):
            background.kick()
            background.join(60)
    assert _by_subject(mail) == {"batch": 1, "alert": 1} and len(hook.accepted) == 2
    [line] = [r.getMessage() for r in caplog.records if r.name == "test.follow-up"]
    assert "4 failed delivery(ies) retried, 4 delivered" in line


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_batch_name_with_a_line_break_is_a_usage_error(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from tests.helpers.cli import invoke_cli

    (tmp_path / "in").mkdir()
    code, out = invoke_cli([command, str(tmp_path / "in"), "--name", "a\r\nBcc: x"],
                           monkeypatch, tmp_path)
    assert code == 2 and "control character" in out and "--name" in out


class _BrokenChannel:
    name = "broken"

    def send(self, notice: object) -> None:
        raise ValueError("Header values may not contain linefeed or carriage return characters")


def test_one_channel_error_never_blocks_the_others(settings: Settings, tmp_path: Path) -> None:
    # A batch name with CR/LF (registered before the CLI refused it) broke the e-mail's
    # Subject; the ValueError escaped and the webhook was skipped too.
    from shared.notify.mail import EmailChannel
    from shared.notify.webhook import WebhookChannel

    sessions = _sessions(settings)
    batch = create_batch(sessions, name="a\r\nBcc: x", priority=Priority.ROUTINE, mode="test")
    ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=8)).new_ids
    process_chunk(ids, token="t", runtime=WorkerRuntime(settings))  # no channels configured
    with smtp_server(tmp_path) as mail, webhook_server(SECRET) as hook:
        notify = _with_notifications(settings, mail.port, hook.url)
        Notifier(notify, sessions, channels=[_BrokenChannel(), EmailChannel(notify),
                                             WebhookChannel(notify)]).batches_finished([batch])
    [message] = mail.messages
    assert "(a Bcc: x)" in message["Subject"] and message["Bcc"] is None
    assert [p["event"] for p in hook.accepted] == ["batch_complete"]
    with sessions() as s:
        rows = {r.channel: r for r in s.execute(select(Notification)).scalars()}
    assert rows["email"].status == rows["webhook"].status == "sent"
    assert rows["broken"].status == "failed" and rows["broken"].attempts == 1
    assert "ValueError" in (rows["broken"].last_error or "")


def test_the_batch_notice_names_its_report_by_absolute_path(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker writing to a relative MAMMO_REPORT_DIR: the recipient gets a path that
    means something outside the worker's working directory."""
    sessions = _processed_without_channels(settings, tmp_path, seed=8)
    monkeypatch.chdir(tmp_path)
    with sessions() as session:
        batch_id = session.execute(select(Batch.id)).scalar_one()
        notice = batch_notice(session, batch_id, html=None,
                              report_path=Path("reports") / "batch-1.html")
    assert notice is not None
    where = str(tmp_path.resolve() / "reports" / "batch-1.html")
    assert f"Batch report: {where}\n" in notice.text
    assert notice.payload["report_path"] == where


def test_a_batch_mixing_a_patient_image_and_two_models_says_both(
        settings: Settings, tmp_path: Path) -> None:
    sessions = _sessions(settings)
    batch = create_batch(sessions, name=None, priority=Priority.ROUTINE, mode="test")
    files = [*make_exam_set(tmp_path / "in", 1, seed=9),
             write_png(tmp_path / "patient.png", synth_mammogram(np.random.default_rng(9)))]
    ids = register_files(sessions, batch, files).new_ids
    process_chunk(ids, token="t", runtime=WorkerRuntime(settings))  # no channels configured
    with sessions() as session:
        # A second worker ran another model: one image's prediction is that model's.
        other = ModelVersion(name="default", version="0.9.0", sha256="9" * 64,
                             preprocessing_version="2", classes=["normal", "benign", "malignant"],
                             input_size=[512, 512], path="/models/default/0.9.0")
        session.add(other)
        session.flush()
        session.execute(update(Prediction).where(Prediction.image_id == ids[0])
                        .values(model_version_id=other.id))
        session.commit()
        notice = batch_notice(session, batch, html=None, report_path=None)
    assert notice is not None
    # The PNG is a patient's (no synthetic maker): the batch is not called test data.
    assert "SYNTHETIC" not in notice.subject
    assert notice.text.startswith("4 of 5 images are synthetic test data")
    assert "Warning: batch 1 was scored by 2 model versions" in notice.text
    assert sorted(notice.payload["models"].values()) == [1, 4]


def test_a_hanging_webhook_holds_neither_the_chunk_nor_the_emails(
    settings: Settings, tmp_path: Path,
) -> None:
    """A receiver that does not answer (here: until the test lets it) held the task for
    the whole retry policy, about 27 s per notification, and so the worker's scoring. The
    chunk now returns with its deliveries handed to the worker's threads; the e-mails go
    out meanwhile, and the webhook's answer, when it comes, is recorded as sent."""
    answer = threading.Event()
    with smtp_server(tmp_path) as mail, webhook_server(SECRET, hold=answer) as hook:
        live = _with_notifications(settings, mail.port, hook.url, notify_timeout_s=60.0,
                                   notify_retries=0)
        sessions = _sessions(live)
        batch = create_batch(sessions, name="slow hook", priority=Priority.ROUTINE, mode="test")
        ids = register_files(sessions, batch, make_exam_set(tmp_path / "in", 1, seed=17)).new_ids
        runtime = WorkerRuntime(live)
        chunk = threading.Thread(target=process_chunk, args=(ids,),
                                 kwargs={"token": "t", "runtime": runtime})
        try:
            chunk.start()
            chunk.join(30)
            assert not chunk.is_alive(), "the chunk waited for the webhook's answer"
            assert _wait_for(lambda: bool(hook.bodies))  # the receiver holds the first one
            assert not hook.accepted
            assert _wait_for(lambda: _by_subject(mail) == {"batch": 1, "alert": 1})
        finally:
            answer.set()
            chunk.join(90)
        runtime.close()  # the worker stops: its threads finish what they hold
    assert sorted(p["event"] for p in hook.accepted) == ["batch_complete", "exam_alert"]
    with sessions() as s:
        rows = s.execute(select(Notification)).scalars().all()
    assert {(r.status, r.attempts) for r in rows} == {("sent", 1)} and len(rows) == 4


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _HeldChannel:
    """A receiver that takes a delivery and answers only when let go."""

    name = "webhook"

    def __init__(self) -> None:
        self.let_go = threading.Event()

    def send(self, notice: object) -> None:
        self.let_go.wait(60)


def test_a_stopping_worker_says_what_it_leaves_unsent_and_records_what_it_never_started(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker stopped while its receiver hangs left its deliveries ``pending`` for 15
    minutes, and nothing said so: `mammo status` did not count them, the log was silent."""
    sessions = _processed_without_channels(settings, tmp_path, seed=18)
    with sessions() as s:
        batch, study = s.execute(select(Batch.id)).scalar_one(), s.execute(
            select(Study.id)).scalar_one()
    held = _HeldChannel()
    live = settings.model_copy(update={"alert_suspicion": 1, "notify_timeout_s": 0.5,
                                       "notify_retries": 0})
    notifier = Notifier(live, sessions, channels=[held], background=True)
    notifier.exams_changed([study])  # taken by the channel's thread, which hangs on it
    notifier.batches_finished([batch])  # queued behind it
    with caplog.at_level(logging.WARNING):
        notifier.close()  # gives up after one worst-case delivery (0.5 s) without a success
    with sessions() as s:
        rows = {r.event: r for r in s.execute(select(Notification)).scalars()}
    assert rows["exam_alert"].status == "pending"  # its sender may still finish it
    left = rows["batch_complete"]
    assert (left.status, left.attempts) == ("failed", 0)
    assert "the worker stopped before its turn" in (left.last_error or "")
    [line] = [r.getMessage() for r in caplog.records if "this process stops" in r.getMessage()]
    assert "2 delivery(ies) unsent: 1 recorded failed" in line and "1 cut off mid-send" in line
    held.let_go.set()
    assert _wait_for(lambda: _status_of(sessions, "exam_alert") == "sent")


def _status_of(sessions: sessionmaker[Session], event: str) -> str:
    with sessions() as s:
        return s.execute(select(Notification.status).where(
            Notification.event == event)).scalar_one()


def test_a_failed_delivery_is_retried_counting_from_its_last_attempt(
    settings: Settings, tmp_path: Path,
) -> None:
    """With MAMMO_NOTIFY_RESEND_AFTER_S=1 and a delivery whose attempts took 2 s, the
    sweeper re-sent it at once: the wait was counted from the claim, before the attempts."""
    from shared.notify.webhook import WebhookChannel

    sessions = _processed_without_channels(settings, tmp_path, seed=19)
    with sessions() as s:
        batch = s.execute(select(Batch.id)).scalar_one()
        [exam] = s.execute(select(ExamResult)).scalars().all()
    assert exam.suspicion is not None and exam.suspicion < 10  # no alert: the batch alone
    answer = threading.Event()
    with webhook_server(SECRET, hold=answer) as hook:
        live = _with_notifications(settings, free_port(), hook.url, notify_timeout_s=1.0,
                                   notify_retries=1, notify_backoff_s=0.0,
                                   notify_resend_after_s=1, alert_suspicion=10)
        notifier = Notifier(live, sessions, channels=[WebhookChannel(live)])
        try:
            notifier.batches_finished([batch])  # two attempts of 1 s each: both time out
            assert _status_of(sessions, "batch_complete") == "failed"
            early = notifier.follow_up()  # failed a moment ago: not due before 1 s
            time.sleep(1.2)
            answer.set()
            due = notifier.follow_up()
        finally:
            answer.set()
    assert (early.retried, due.retried, due.delivered) == (0, 1, 1)


def test_a_chunk_still_running_after_the_stop_sends_in_line(settings: Settings) -> None:
    """An embedded worker's thread can outlive its stop; a notifier it made afterwards
    would start sender threads that nobody closes, leaving its deliveries pending."""
    runtime = WorkerRuntime(settings)
    assert runtime.notifier._handoff is not None  # a worker's notifier sends from threads
    runtime.close()
    assert runtime.notifier._handoff is None  # after the stop: in-line, nothing to close
    runtime.close()
