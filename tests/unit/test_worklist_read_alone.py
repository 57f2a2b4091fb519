"""An image scored outside any exam (no study: a PNG without a manifest study_id, a mini-MIAS
file) is read first like an exam: a worklist row of its own, in the batch summary's read-first
table, and an alert at MAMMO_ALERT_SUSPICION, once. Every row names the model(s) behind its
scores and gives the probabilities behind them, not a class verdict."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Notification, Prediction
from shared.exams import refresh_exam_results
from shared.notify import Notifier
from shared.notify.message import Notice
from shared.read_alone import READ_ALONE_FLAG
from shared.reports.batch_data import collect_batch_summary
from shared.reports.batch_html import render_summary_html
from shared.reports.batch_pdf import worklist_table
from shared.reports.layout import worklist_heading
from shared.reports.worklist import (
    FLAT_WORKLIST_KEYS,
    WorklistFilter,
    count_worklist,
    flat_worklist_row,
    unlisted_exams,
    worklist_rows,
)
from shared.scoring import label_of, suspicion
from tests.unit.test_exam_own_view_scores import _exam

NINE = (0.1, 0.1, 0.78)  # suspicion 9
LOW = (0.9, 0.08, 0.02)
SIX = (0.3, 0.2, 0.5)


def _image(session: Session, name: str, probs: tuple[float, float, float] | None, *,
           model: int = 2, laterality: str | None = "L") -> int:
    """An image of no exam, scored by model ``model`` (None: still queued)."""
    image = Image(identity=f"sha256:{name}", batch_id=1, study_id=None, source=f"/in/{name}",
                  format="png", laterality=laterality, view="MLO",
                  state="queued" if probs is None else "done")
    session.add(image)
    session.flush()
    if probs is not None:
        session.add(Prediction(
            image_id=image.id, model_version_id=model, preprocessing_version="1",
            label=label_of(*probs).value, p_normal=probs[0], p_benign=probs[1],
            p_malignant=probs[2], suspicion=suspicion(probs[1], probs[2]), decode_ms=1,
            preprocess_ms=1, infer_ms=1, forward_pass_id="x", forward_pass_size=1))
        session.flush()
    return image.id


def _seed(session: Session) -> dict[str, int]:
    """An exam scored by m:1 (suspicion 6 per side), and three images of no exam: a 9 and
    a 2 scored by m:2, one still queued."""
    session.add_all([Batch(id=1, name="b"), *(ModelVersion(
        id=i, name="m", version=str(i), sha256=str(i) * 64, preprocessing_version="1",
        classes=["a"], input_size=[1, 1], path="/m") for i in (1, 2))])
    session.flush()
    _exam(session, 1, {"L": SIX, "R": SIX})
    ids = {"nine": _image(session, "alone9.png", NINE),
           "low": _image(session, "alone-low.png", LOW, laterality=None),
           "queued": _image(session, "queued.png", None)}
    refresh_exam_results(session, [1], timeout_s=0)
    session.commit()
    return ids


def test_an_image_of_no_exam_is_a_worklist_row_ranked_with_the_exams(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        ids = _seed(session)
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        first = worklist_rows(session, WorklistFilter(limit=1), report_dir=tmp_path)
        in_batch = worklist_rows(session, WorklistFilter(batch_id=1), report_dir=tmp_path)
        total = count_worklist(session, WorklistFilter())
        note = unlisted_exams(session, WorklistFilter(), timeout_s=0).note()

    assert [(r["rank"], r["study_uid"], r["image_id"], r["suspicion"]) for r in rows] == [
        (1, None, ids["nine"], 9), (2, "1.2.9.1", None, 6), (3, None, ids["low"], 1)]
    assert first == rows[:1] and in_batch == rows and total == 3
    alone = rows[0]
    # The documented keys, with what names the image and why it stands alone.
    assert alone["source"] == "/in/alone9.png" and alone["report_path"] is None
    assert alone["flags"] == [READ_ALONE_FLAG] and "other views were not compared" in \
        READ_ALONE_FLAG
    assert alone["per_breast"]["L"]["suspicion"] == 9
    assert alone["per_breast"]["L"]["p_malignant"] == NINE[2]
    assert abs(alone["per_breast"]["L"]["p_abnormal"] - 0.9) < 1e-9
    # Its own-view values are the image's, keyed as an exam row's are.
    assert alone["per_breast"]["L"]["own_suspicion"] == 9
    assert alone["per_breast"]["L"]["own_p_malignant"] == NINE[2]
    assert set(alone["per_breast"]["L"]) == set(rows[1]["per_breast"]["L"])
    assert rows[2]["per_breast"] == {}  # laterality unknown
    # Each row names the model behind its scores: the exam m:1, the images m:2.
    assert [r["models"] for r in rows] == [["m:2"], ["m:1"], ["m:2"]]
    # The exam's probabilities per breast: P(malignant) and P(abnormal).
    assert abs(rows[1]["per_breast"]["R"]["p_abnormal"] - 0.7) < 1e-9
    assert note is not None and "1 image(s) outside any exam not listed yet" in note

    flat = [flat_worklist_row(r) for r in rows]
    assert list(flat[0]) == list(FLAT_WORKLIST_KEYS)
    assert flat[0]["image_id"] == ids["nine"] and flat[0]["models"] == "m:2"
    assert flat[0]["left_p_malignant"] == NINE[2] and flat[0]["study_uid"] is None
    assert flat[1]["models"] == "m:1" and flat[1]["right_p_abnormal"] is not None


def test_the_exam_row_names_each_model_its_views_were_scored_by(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    # One view re-scored by m:2 (an activated model and `mammo rescore`): the row says both.
    with each_backend_sessions() as session:
        _seed(session)
        view = session.execute(select(Image.id).where(Image.study_id == 1,
                                                      Image.laterality == "R")).scalar_one()
        session.add(Prediction(
            image_id=view, model_version_id=2, preprocessing_version="1", label="normal",
            p_normal=0.9, p_benign=0.05, p_malignant=0.05, suspicion=1, decode_ms=1,
            preprocess_ms=1, infer_ms=1, forward_pass_id="y", forward_pass_size=1))
        session.flush()
        refresh_exam_results(session, [1], timeout_s=0)
        session.commit()
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
    exam = next(r for r in rows if r["study_uid"] == "1.2.9.1")
    assert exam["models"] == ["m:1", "m:2"]
    assert flat_worklist_row(exam)["models"] == "m:1; m:2"


def test_the_batch_summary_reads_the_image_first_with_probabilities_and_models(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        ids = _seed(session)
        summary = collect_batch_summary(session, 1, report_dir=tmp_path)
    assert (summary.exams, summary.read_alone) == (1, 2)
    assert [r["image_id"] for r in summary.worklist] == [ids["nine"], None, ids["low"]]
    assert worklist_heading(summary) == ("Read first: exams and images read alone (no exam) "
                                         "by suspicion")
    html = render_summary_html(summary)
    table = html[html.index("Read first"):]
    assert f"image {ids['nine']}, read alone (no exam): /in/alone9.png" in table
    # Probabilities, not verdicts: "9 (malignant)" is gone.
    assert "9; P(malignant) 0.780; P(abnormal) 0.900" in table
    assert " (malignant)" not in table and "<td>m:2</td>" in table and "<td>m:1</td>" in table

    grid = worklist_table(summary)
    cells = [[str(c.getPlainText()) for c in row]
             for row in grid._cellvalues]  # type: ignore[attr-defined]
    assert cells[0][:4] == ["rank", "suspicion", "P(malignant)", "left"]
    assert "model" in cells[0]
    assert cells[1][:3] == ["1", "9", "0.780"] and "m:2" in cells[1]
    assert cells[2][0] == f"image {ids['nine']}, read alone (no exam): /in/alone9.png"


class _Channel:
    name = "webhook"

    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice)


def _notifier(sessions: sessionmaker[Session], channel: _Channel) -> Notifier:
    settings = Settings(_env_file=None, alert_suspicion=8)  # type: ignore[call-arg]
    return Notifier(settings, sessions, channels=[channel])


def test_an_image_of_no_exam_at_the_threshold_alerts_once(
        each_backend_sessions: sessionmaker[Session]) -> None:
    with each_backend_sessions() as session:
        ids = _seed(session)
        exam_views = list(session.execute(select(Image.id).where(Image.study_id == 1))
                          .scalars())
    channel = _Channel()
    notifier = _notifier(each_backend_sessions, channel)
    # The worker hands over every image it saved: the exam's views are the exams' to alert.
    notifier.images_scored([*exam_views, ids["nine"], ids["low"]])
    # Redelivered, and the sweeper's follow-up in another process: nothing more.
    notifier.images_scored([ids["nine"]])
    owed = _notifier(each_backend_sessions, channel).follow_up()

    assert [n.subject_key for n in channel.sent] == [f"image:{ids['nine']}"]
    assert owed.owed_alerts == 0
    notice = channel.sent[0]
    assert notice.event.value == "exam_alert" and notice.image_id == ids["nine"]
    assert notice.payload["study_uid"] is None and notice.payload["image_id"] == ids["nine"]
    assert notice.payload["suspicion"] == 9 and notice.payload["flags"] == [READ_ALONE_FLAG]
    assert notice.payload["file"] == "alone9.png" and notice.payload["model_version"] == "m:2"
    assert re.search(r"suspicion 9 of 10 \(alert threshold 8\)", notice.text)
    assert "/in/" not in notice.text  # the file's name, not its folders
    with each_backend_sessions() as session:
        rows = session.execute(select(Notification.event, Notification.subject_key,
                                      Notification.image_id, Notification.status)).all()
    assert rows == [("exam_alert", f"image:{ids['nine']}", ids["nine"], "sent")]


def test_an_image_alert_nobody_claimed_is_owed_and_sent_by_the_follow_up(
        each_backend_sessions: sessionmaker[Session]) -> None:
    # The worker died between its save and its alert: the sweeper's follow-up sends it.
    with each_backend_sessions() as session:
        ids = _seed(session)
        assert session.scalar(select(ExamResult.suspicion)) == 6  # no exam alert owed
    channel = _Channel()
    report = _notifier(each_backend_sessions, channel).follow_up()
    again = _notifier(each_backend_sessions, channel).follow_up()
    assert (report.owed_alerts, again.owed_alerts) == (1, 0)
    assert [n.subject_key for n in channel.sent] == [f"image:{ids['nine']}"]
