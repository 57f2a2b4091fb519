"""An exam submitted urgent says so after it is scored: in the worklist (JSON, CSV, table),
its alert (subject, text, webhook payload) and its PDF. The list stays ranked by suspicion
(the contract's order); ``priority`` stands beside the score.

An exam is urgent when any of its images came in an urgent batch, or a copy of one did
(``mammo submit --priority urgent`` of files already queued routine: the duplicate raises
the image, as the broker already treats it).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.schema import Batch, DuplicateSubmission, Image, ModelVersion
from shared.exams import refresh_exam_results
from shared.notify.content import URGENT_LINE, exam_alert_notice, image_alert_notice
from shared.reports.exam_data import load_exam_report, load_image_report
from shared.reports.worklist import WorklistFilter, flat_worklist_row, worklist_rows
from tests.unit.test_exam_own_view_scores import _exam
from tests.unit.test_worklist_read_alone import LOW, NINE, SIX, _image


def _seed(session: Session) -> dict[str, int]:
    """Exam 1 routine (suspicion 9), exam 2 in an urgent batch (6), exam 3 routine but one
    view copied by an urgent batch (1); an image of no exam in the urgent batch (9) and one
    routine (1)."""
    session.add_all([Batch(id=1, name="night"), Batch(id=2, name="now", priority="urgent"),
                     ModelVersion(id=2, name="m", version="2", sha256="2" * 64,
                                  preprocessing_version="1", classes=["a"], input_size=[1, 1],
                                  path="/m"),
                     ModelVersion(id=1, name="m", version="1", sha256="1" * 64,
                                  preprocessing_version="1", classes=["a"], input_size=[1, 1],
                                  path="/m")])
    session.flush()
    _exam(session, 1, {"L": NINE, "R": NINE})
    _exam(session, 2, {"L": SIX, "R": SIX})
    _exam(session, 3, {"L": LOW, "R": LOW})
    for image in session.scalars(select(Image).where(Image.study_id == 2)):
        image.batch_id = 2
    copied = session.scalars(select(Image.id).where(Image.study_id == 3)).first()
    assert copied is not None
    session.add(DuplicateSubmission(batch_id=2, image_id=copied, source="/again/3L.dcm"))
    ids = {"urgent_alone": _image(session, "u.png", NINE), "routine_alone":
           _image(session, "r.png", LOW)}
    session.get(Image, ids["urgent_alone"]).batch_id = 2  # type: ignore[union-attr]
    refresh_exam_results(session, [1, 2, 3], timeout_s=0)
    session.commit()
    return ids


def test_urgent_exams_and_images_say_so_in_the_worklist_alerts_and_reports(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        ids = _seed(session)
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        in_batch = worklist_rows(session, WorklistFilter(batch_id=2), report_dir=tmp_path)
        routine_alert = exam_alert_notice(session, 1, threshold=1)
        urgent_alert = exam_alert_notice(session, 2, threshold=1)
        copied_alert = exam_alert_notice(session, 3, threshold=1)
        image_alert = image_alert_notice(session, ids["urgent_alone"], threshold=1)
        plain_image_alert = image_alert_notice(session, ids["routine_alone"], threshold=1)
        reports = {uid: load_exam_report(session, uid).priority
                   for uid in ("1.2.9.1", "1.2.9.2", "1.2.9.3")}
        image_reports = {name: load_image_report(session, image_id).priority
                         for name, image_id in ids.items()}

    by_key = {r["study_uid"] or r["image_id"]: r for r in rows}
    # Still ranked by suspicion: the routine 9 before the urgent 6.
    assert [r["suspicion"] for r in rows] == sorted((r["suspicion"] for r in rows),
                                                    reverse=True)
    assert [r["study_uid"] for r in rows if r["study_uid"]] == ["1.2.9.1", "1.2.9.2",
                                                                 "1.2.9.3"]
    assert {key: row["priority"] for key, row in by_key.items()} == {
        "1.2.9.1": "routine", "1.2.9.2": "urgent", "1.2.9.3": "urgent",
        ids["urgent_alone"]: "urgent", ids["routine_alone"]: "routine"}
    assert {r["study_uid"] or r["image_id"]: r["priority"] for r in in_batch} == {
        "1.2.9.2": "urgent", ids["urgent_alone"]: "urgent"}
    assert flat_worklist_row(by_key["1.2.9.2"])["priority"] == "urgent"

    assert routine_alert is not None and urgent_alert is not None
    assert copied_alert is not None and image_alert is not None
    assert plain_image_alert is not None
    assert "URGENT" not in routine_alert.subject and URGENT_LINE not in routine_alert.text
    assert routine_alert.payload["priority"] == "routine"
    for notice in (urgent_alert, copied_alert, image_alert):
        assert notice.subject.startswith("[mammo] URGENT: Suspicion "), notice.subject
        assert notice.text.startswith(URGENT_LINE) and notice.payload["priority"] == "urgent"
    assert plain_image_alert.payload["priority"] == "routine"
    assert "URGENT" not in plain_image_alert.subject

    assert reports == {"1.2.9.1": "routine", "1.2.9.2": "urgent", "1.2.9.3": "urgent"}
    assert image_reports == {"urgent_alone": "urgent", "routine_alone": "routine"}
