"""A breast's own-view score beside its bilateral one, stored, in the exam report's data and
in the worklist's order: a cancer in each breast must not rank below a one-sided one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from shared.db.schema import Batch, Image, ModelVersion, Prediction, Study
from shared.exams import refresh_exam_results
from shared.notify.content import exam_alert_notice
from shared.notify.records import owed
from shared.reports.exam_data import load_exam_report
from shared.reports.exam_pdf import _exam_result
from shared.reports.worklist import WorklistFilter, worklist_rows
from shared.scoring import label_of, suspicion
from shared.timeutil import utcnow

# 1.8.0's head (models/default/1.8.0/metadata.json): a negative weight on the other breast.
HEAD_1_8_0 = {"abnormal": {"own": 1.0317311001875396, "partner": -0.6919775201924726,
                           "bias": -0.4438632742612656}, "malignant": None}
MALIGNANT, NORMAL = (0.05, 0.05, 0.9), (0.9, 0.08, 0.02)
NINE = (0.1, 0.1, 0.78)  # suspicion 9 alone
Probs = tuple[float, float, float]


def _exam(session: Session, study_id: int, views: dict[str, Probs]) -> None:
    """Study ``study_id`` with one scored CC per side in ``views`` ({"L": probs, ...})."""
    session.add(Study(id=study_id, study_uid=f"1.2.9.{study_id}"))
    session.flush()
    for side, probs in views.items():
        image = Image(identity=f"sop:1.2.9.{study_id}.{side}", batch_id=1, study_id=study_id,
                      source=f"/in/{study_id}{side}.dcm", format="dicom", laterality=side,
                      view="CC", state="done", created_at=utcnow())
        session.add(image)
        session.flush()
        session.add(Prediction(
            image_id=image.id, model_version_id=1, preprocessing_version="1",
            label=label_of(*probs).value, p_normal=probs[0], p_benign=probs[1],
            p_malignant=probs[2], suspicion=suspicion(probs[1], probs[2]), decode_ms=1,
            preprocess_ms=1, infer_ms=1, forward_pass_id="x", forward_pass_size=1))
    session.flush()


def test_a_cancer_in_each_breast_shows_both_scores_and_ranks_by_its_own_views(
        each_backend_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with each_backend_sessions() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[1, 1], path="/m", bilateral=HEAD_1_8_0)])
        session.flush()
        _exam(session, 1, {"L": NINE})                            # one view, no partner
        _exam(session, 2, {"L": MALIGNANT, "R": MALIGNANT})       # a cancer in each breast
        _exam(session, 3, {"L": MALIGNANT, "R": NORMAL})          # one-sided
        assert len(refresh_exam_results(session, [1, 2, 3], timeout_s=0)) == 3
        session.commit()
        rows = worklist_rows(session, WorklistFilter(), report_dir=tmp_path)
        report = load_exam_report(session, "1.2.9.2")

    by_uid = {row["study_uid"]: row for row in rows}
    both, one_sided = by_uid["1.2.9.2"], by_uid["1.2.9.3"]
    # The validated scores stay: read against each other, both breasts score under 9 ...
    assert both["exam_suspicion"] < 9 and both["per_breast"]["L"]["own_suspicion"] == 10
    assert any(f.startswith("R breast: suspicion 10 alone,") for f in both["flags"])
    # ... but the exam ranks, and is listed, by its own views' 10: beside the one-sided
    # cancer, above the 9.
    assert one_sided["suspicion"] == both["suspicion"] == 10
    assert [row["study_uid"] for row in rows] == ["1.2.9.3", "1.2.9.2", "1.2.9.1"]

    right = report.breast("R")
    assert right is not None and right.bilateral and right.lowered_by_other_breast
    assert (right.own_suspicion, right.suspicion) == (10, both["per_breast"]["R"]["suspicion"])
    assert right.own_p_malignant is not None and right.p_malignant is not None
    assert right.own_p_malignant > right.p_malignant
    # The worklist's JSON row carries both of the breast's own-view values, as the exam
    # report does (README: per_breast.<side>.own_suspicion, own_p_malignant).
    assert both["per_breast"]["R"]["own_suspicion"] == right.own_suspicion
    assert both["per_breast"]["R"]["own_p_malignant"] == right.own_p_malignant
    assert one_sided["per_breast"]["L"]["own_p_malignant"] == MALIGNANT[2]
    assert report.breast("X") is None

    # The exam PDF's result table shows both scores of each lowered breast, and says why.
    shown = " ".join(_pdf_text(f) for f in _exam_result(report))
    assert f"{right.suspicion} (10 alone)" in shown
    # A label, not "the most probable class": normal only at P(normal) >= 0.5; a breast's
    # and the exam's the gravest of its views' (shared.exams).
    assert "gravest view label" in shown and "class" not in shown
    assert ("The right breast's own views score 10 (max P(malignant) "
            f"{right.own_p_malignant:.3f}); read against the other breast, "
            f"{right.suspicion}") in shown and "Read both breasts." in shown


def _pdf_text(flowable: object) -> str:
    """A paragraph's text, or a table's cells' texts."""
    if hasattr(flowable, "getPlainText"):
        return str(flowable.getPlainText())
    cells = getattr(flowable, "_cellvalues", [])
    return " ".join(_pdf_text(cell) if hasattr(cell, "getPlainText") else str(cell)
                    for row in cells for cell in row)


def test_a_cancer_in_each_breast_is_alerted_by_its_own_views_score(
        each_backend_sessions: sessionmaker[Session]) -> None:
    # Read against each other, both breasts fell under the alert threshold: no alert went
    # out for the exam the worklist puts first.
    with each_backend_sessions() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[1, 1], path="/m", bilateral=HEAD_1_8_0)])
        session.flush()
        _exam(session, 2, {"L": MALIGNANT, "R": MALIGNANT})
        _exam(session, 4, {"L": NORMAL, "R": NORMAL})
        refresh_exam_results(session, [2, 4], timeout_s=0)
        session.commit()
        reread = load_exam_report(session, "1.2.9.2").result
        assert reread is not None and reread.suspicion is not None and reread.suspicion < 10
        notice = exam_alert_notice(session, 2, threshold=10)
        _, alerted = owed(session, "email", since=utcnow() - timedelta(hours=1),
                          now=utcnow(), alert_threshold=10)
    assert notice is not None and notice.payload["exam_suspicion"] == reread.suspicion
    assert notice.payload["suspicion"] == 10  # the worklist's score
    assert f"suspicion 10 of 10 by a breast's own views ({reread.suspicion} with" in notice.text
    assert alerted == [2]
