"""Upgrading relabels what releases before the label rule stored: a view they labelled by its
most probable class ('normal' at P(normal) 0.40, abnormal 0.60) reads by the current rule
(shared.scoring.label_of), and the exams reading it are recomputed, not left normal."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, upgrade
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Prediction, Study
from shared.exams import refresh_due_exams, refresh_exam_results, studies_awaiting_result
from shared.scoring import label_of
from tests.helpers.old_schema import downgraded_to

VIEWS = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))
CLEAR = (0.9, 0.05, 0.05)
# (study, image, model version, probabilities, the label the earlier release stored: the top
# class, the first of a tie). Image 8's prediction by model 1 was replaced by model 2's.
ROWS = (
    (1, 1, 1, (0.4018, 0.346, 0.252), "normal"),  # the probe's image 6: benign now
    (1, 2, 1, CLEAR, "normal"),
    (1, 3, 1, CLEAR, "normal"),
    (1, 4, 1, CLEAR, "normal"),
    (2, 5, 1, (0.5, 0.3, 0.2), "normal"),  # P(normal) 0.5: normal under both rules
    (2, 6, 1, (0.1, 0.2, 0.7), "malignant"),
    (3, 7, 1, (0.45, 0.45, 0.1), "normal"),  # a tie with normal: argmax took normal
    (2, 8, 1, (0.4, 0.35, 0.25), "normal"),  # superseded: the exam reads model 2's
    (2, 8, 2, (0.2, 0.5, 0.3), "benign"),
    (3, 9, 1, (0.2, 0.4, 0.4), "benign"),  # a tie of benign and malignant: malignant now
    (None, 10, 1, (0.3, 0.25, 0.45), "malignant"),  # no exam
    (None, 11, 1, (0.34, 0.33, 0.33), "normal"),
)


def _seed(engine: Engine, backend: str) -> None:
    with Session(engine) as s:
        s.add(Batch(id=1, name="night"))
        s.add_all([Study(id=n, study_uid=f"1.2.{n}") for n in (1, 2, 3)])
        s.add_all([ModelVersion(id=n, name="m", version=f"1.0.{n}", sha256=f"{n}" * 64,
                                preprocessing_version="2", classes=["a"], input_size=[1, 1],
                                path=f"/m/{n}") for n in (1, 2)])
        s.flush()
        images = {(study, image) for study, image, *_ in ROWS}
        for study, image in sorted(images, key=lambda i: i[1]):
            lat, view = VIEWS[(image - 1) % 4]
            s.add(Image(id=image, identity=f"sop:{image}", batch_id=1, study_id=study,
                        source=f"/in/{image}.dcm", format="dicom", laterality=lat, view=view,
                        state="done"))
        s.flush()
        for n, (_, image, model, (p_n, p_b, p_m), label) in enumerate(ROWS, start=1):
            s.add(Prediction(id=n, image_id=image, model_version_id=model,
                             preprocessing_version="2", label=label, p_normal=p_n,
                             p_benign=p_b, p_malignant=p_m, suspicion=5, decode_ms=1,
                             preprocess_ms=1, infer_ms=1, forward_pass_id="fp",
                             forward_pass_size=1))
        if backend == "postgresql":  # NaN (SQLite stores it as NULL): no rule applies
            s.add(Image(id=12, identity="sop:12", batch_id=1, source="/in/12.dcm",
                        format="dicom", state="done"))
            s.flush()
            s.add(Prediction(id=len(ROWS) + 1, image_id=12, model_version_id=1,
                             preprocessing_version="2", label="malignant",
                             p_normal=math.nan, p_benign=math.nan, p_malignant=math.nan,
                             suspicion=10, decode_ms=1, preprocess_ms=1, infer_ms=1,
                             forward_pass_id="fp", forward_pass_size=1))
        s.flush()
        # The exam results the earlier release computed from those labels.
        refresh_exam_results(s, [1, 2, 3], timeout_s=0)
        s.commit()


def _back_to_0015(url: str) -> None:
    """The schema an earlier release left: 0017 (this migration) not applied."""
    downgraded_to(url, "0015")
    plain = create_engine(url)
    with plain.connect() as conn:
        assert {"0010", "0015"} <= set(conn.execute(
            text("SELECT version_num FROM alembic_version")).scalars())
    plain.dispose()


def _labels(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, label FROM predictions")).all())


def _seqs(engine: Engine) -> list[tuple[int, int, int]]:
    with engine.connect() as conn:
        return [(a, b, c) for a, b, c in conn.execute(text(
            "SELECT id, exam_inputs_seq, exam_result_seq FROM studies ORDER BY id"))]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_relabels_predictions_by_the_rule_and_owes_their_exams_a_refresh(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    _seed(engine, backend)
    with Session(engine) as s:
        assert dict(s.execute(select(ExamResult.study_id, ExamResult.label)).all()) == {
            1: "normal", 2: "malignant", 3: "benign"}
    _back_to_0015(url)

    upgrade(engine)

    labels = _labels(engine)
    assert {n: labels[n] for n in range(1, len(ROWS) + 1)} == {
        n: label_of(*probs).value for n, (_, _, _, probs, _) in enumerate(ROWS, start=1)}
    # The probe's view, the tie with normal, the superseded one, benign = malignant, and
    # (0.34, 0.33, 0.33): the rule's malignant, not the top class.
    assert {n for n, row in enumerate(ROWS, start=1) if labels[n] != row[4]} == {
        1, 7, 8, 10, 12}
    if backend == "postgresql":
        assert labels[len(ROWS) + 1] == "malignant"
    # Studies 1 and 3 read a relabelled view; 2 does not (image 8's model 1 prediction).
    assert _seqs(engine) == [(1, 1, 0), (2, 0, 0), (3, 1, 0)]
    with Session(engine) as s:
        assert studies_awaiting_result(s) == [1, 3]

    # Run again, it finds nothing to do: the exams are owed once.
    _back_to_0015(url)
    upgrade(engine)
    assert _seqs(engine) == [(1, 1, 0), (2, 0, 0), (3, 1, 0)]
    assert _labels(engine) == labels

    # The refresh recomputes them from the views' labels: a new version each, the old kept.
    with Session(engine) as s:
        assert len(refresh_due_exams(s, timeout_s=0)) == 2
        current = dict(s.execute(select(ExamResult.study_id, ExamResult.label).where(
            ExamResult.superseded_at.is_(None))).all())
        versions = s.execute(select(ExamResult.study_id, ExamResult.version, ExamResult.label)
                             .order_by(ExamResult.study_id, ExamResult.version)).all()
        assert studies_awaiting_result(s) == []
    assert current == {1: "benign", 2: "malignant", 3: "malignant"}
    assert versions == [(1, 1, "normal"), (1, 2, "benign"), (2, 1, "malignant"),
                        (3, 1, "benign"), (3, 2, "malignant")]
    assert _seqs(engine) == [(1, 1, 1), (2, 0, 0), (3, 1, 1)]
    engine.dispose()
