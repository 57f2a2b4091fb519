"""Delivery ids: what a webhook receiver de-duplicates by (README, Notifications).

They were built from database ids ("exam_alert:study:14"): a database restored from a backup
gave the next exams and batches the ids of those registered after the backup, and two sites'
databases posting to one receiver both had a study 14, so a receiver refusing ids it had
seen dropped another patient's alert. An id is now the same for every attempt and re-send
of one event about one exam, image or batch, and never names another.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

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
from shared.notify import Notifier
from shared.notify.content import batch_notice, exam_alert_notice, image_alert_notice
from shared.notify.message import Notice
from shared.notify.webhook import WebhookChannel
from tests.helpers.notify_servers import webhook_server

THRESHOLD = 5
PATIENT = "pseudo-7f3e"
SECRET = "delivery-id-webhook-secret"
Database = Callable[[Path], sessionmaker[Session]]


def _settings(path: Path, **extra: Any) -> Settings:
    return Settings(_env_file=None, database_url=f"sqlite:///{path}",  # type: ignore[call-arg]
                    broker_url=None, alert_suspicion=THRESHOLD, notify_retries=0,
                    notify_timeout_s=5.0, **extra)


def _delivery_ids(notices: list[Notice]) -> list[str]:
    """The ``delivery`` of each notice's webhook body, as a receiver reads it."""
    with webhook_server(SECRET) as hook:
        channel = WebhookChannel(Settings(_env_file=None, webhook_url=hook.url,  # type: ignore[call-arg]
                                          webhook_secret=SecretStr(SECRET)))
        for notice in notices:
            channel.send(notice)
    assert hook.refused == 0
    return [str(payload["delivery"]) for payload in hook.accepted]


@pytest.fixture
def database() -> Iterator[Database]:
    """Sessions on a SQLite file with the schema in place; engines disposed afterwards."""
    engines: list[Engine] = []

    def open_at(path: Path) -> sessionmaker[Session]:
        engines.append(create_db_engine(_settings(path)))
        ensure_schema(engines[-1])
        return make_session_factory(engines[-1])

    yield open_at
    for engine in engines:
        engine.dispose()


def _scored(session: Session, batch: Batch, identity: str, study: Study | None) -> Image:
    """A done image of ``batch`` with a prediction at suspicion 9."""
    model = session.execute(select(ModelVersion)).scalars().first() or ModelVersion(
        name="default", version="1.0.0", sha256="0" * 64, preprocessing_version="2",
        classes=["normal", "benign", "malignant"], input_size=[64, 64], path="/models/m")
    image = Image(identity=identity, batch=batch, study=study, source=f"/in/{identity}.dcm",
                  format="dicom", laterality="L", view="CC", state="done")
    session.add(Prediction(image=image, model_version=model, preprocessing_version="2",
                           label="malignant", p_normal=0.05, p_benign=0.05, p_malignant=0.9,
                           suspicion=9, decode_ms=1.0, preprocess_ms=1.0, infer_ms=1.0,
                           forward_pass_id="fp", forward_pass_size=1))
    return image


def _exam_result(study_id: int, version: int, suspicion: int) -> ExamResult:
    return ExamResult(study_id=study_id, version=version, status="complete", reason="views",
                      label="malignant", p_malignant=0.9, suspicion=suspicion, per_breast={},
                      views=["L-CC"], missing_views=[], flags=[], n_images=1, n_failed=0,
                      signature=str(version))


def _register(sessions: sessionmaker[Session], batch_name: str,
              study_uid: str) -> tuple[int, int, int]:
    """A finished batch holding a scored exam (one view) and an image of no exam, as a
    site registers them: (batch id, study id, id of the image read alone)."""
    with sessions() as session:
        batch = Batch(name=batch_name, mode="test", finished_at=datetime.now(UTC))
        study = Study(study_uid=study_uid, accession_number="ACC-1", patient_pseudonym=PATIENT)
        _scored(session, batch, f"sop:{study_uid}.1", study)
        alone = _scored(session, batch, f"sha256:{study_uid}-png", None)
        session.flush()
        session.add(_exam_result(study.id, 1, 9))
        session.commit()
        return batch.id, study.id, alone.id


def _notices(sessions: sessionmaker[Session], ids: tuple[int, int, int]) -> list[Notice]:
    batch_id, study_id, image_id = ids
    with sessions() as session:
        found = [batch_notice(session, batch_id, html=None, report_path=None),
                 exam_alert_notice(session, study_id, THRESHOLD),
                 image_alert_notice(session, image_id, THRESHOLD)]
    assert all(found), found
    return [notice for notice in found if notice is not None]


def _backup(source: Path, target: Path) -> None:
    """What an operator restores from: SQLite's online backup (the WAL included)."""
    live, copy = sqlite3.connect(source), sqlite3.connect(target)
    try:
        live.backup(copy)
    finally:
        live.close()
        copy.close()


@pytest.mark.parametrize("second", ["restored from a backup", "another site's"])
def test_the_same_database_ids_for_other_exams_and_batches_are_other_delivery_ids(
    tmp_path: Path, database: Database, second: str,
) -> None:
    first = database(tmp_path / "site.db")
    _register(first, "earlier", "1.2.826.0.1.100")  # in both databases
    if second == "restored from a backup":
        _backup(tmp_path / "site.db", tmp_path / "other.db")
    ids = _register(first, "runB", "1.2.826.0.1.214")
    other = database(tmp_path / "other.db")
    if second == "another site's":
        _register(other, "earlier", "1.2.826.0.9.100")
    # The second database's next exam and batch get the same ids, for other patients.
    assert _register(other, "runC", "1.2.826.0.9.214") == ids

    sent, reused = _notices(first, ids), _notices(other, ids)
    assert [n.subject_key for n in sent] == [n.subject_key for n in reused]  # rows' keys
    delivered = _delivery_ids([*sent, *reused])
    assert len(set(delivered)) == 6, delivered
    for notice, delivery in zip([*sent, *reused], delivered, strict=True):
        event, kind, digest = delivery.split(":")
        assert (event, kind) == (notice.event.value, notice.subject_key.split(":")[0])
        assert re.fullmatch("[0-9a-f]{24}", digest)  # nothing in clear: receivers log ids


def test_an_unnamed_batch_made_at_another_time_is_another_delivery_id(
    tmp_path: Path, database: Database,
) -> None:
    """Batches have no UID: their name and the time they were made tell them apart."""
    sessions = database(tmp_path / "site.db")
    made = datetime(2026, 3, 1, 2, 0, 1, tzinfo=UTC)
    ids = _register(sessions, "night", "1.2.826.0.1.1")
    with sessions() as session:
        session.execute(update(Batch).values(name=None, created_at=made))
        session.commit()
    before = _notices(sessions, ids)[0]
    with sessions() as session:
        session.execute(update(Batch).values(created_at=made + timedelta(seconds=1)))
        session.commit()
    again = _notices(sessions, ids)[0]
    assert len(set(_delivery_ids([before, before, again]))) == 2


def test_a_retry_and_a_re_send_after_a_re_score_keep_their_delivery_id(
    tmp_path: Path, database: Database,
) -> None:
    sessions = database(tmp_path / "site.db")
    batch_id, study_id, image_id = _register(sessions, "night", "1.2.826.0.1.7")
    with webhook_server(SECRET) as hook:
        # Signed with another secret: the receiver reads each body and answers 401.
        refused = _settings(tmp_path / "site.db", webhook_url=hook.url,
                            webhook_secret="rotated-secret")
        notifier = Notifier(refused, sessions, batch_html=lambda _s, _b: None)
        notifier.batches_finished([batch_id])
        notifier.exams_changed([study_id])
        notifier.images_scored([image_id])
        assert (len(hook.bodies), hook.refused) == (3, 3)

        # The exam is re-scored (a late view: a new version, still above the threshold)
        # before the sweeper re-sends its failed alert: still one alert about one exam.
        with sessions() as session:
            session.execute(update(ExamResult).values(superseded_at=datetime.now(UTC)))
            session.add(_exam_result(study_id, 2, 7))
            past = datetime.now(UTC) - timedelta(seconds=refused.notify_resend_after_s + 1)
            session.execute(update(Notification).values(claimed_at=past))
            session.commit()
        fixed = _settings(tmp_path / "site.db", webhook_url=hook.url, webhook_secret=SECRET)
        report = Notifier(fixed, sessions, batch_html=lambda _s, _b: None).follow_up()

    assert (report.retried, report.delivered) == (3, 3)
    first = sorted(json.loads(body)["delivery"] for body in hook.bodies[:3])
    assert sorted(payload["delivery"] for payload in hook.accepted) == first
    [alert] = [payload for payload in hook.accepted if payload.get("study_uid")]
    assert alert["exam_suspicion"] == 7  # the re-send says what the exam reads now
    with sessions() as session:
        assert set(session.execute(select(Notification.status)).scalars()) == {"sent"}
