"""Exam grouping: complete with 4 views, flagged incomplete after the timeout, recomputed
(with the old version kept) when a late image arrives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, ExamResult, Image, ModelVersion, Prediction, Study
from shared.exams import (
    FINDING_ALONE,
    STANDARD_VIEWS,
    ExamImage,
    read_against_other_breast,
    refresh_exam_results,
    studies_awaiting_result,
    studies_of_images,
    summarise,
)
from shared.scoring import suspicion as suspicion_of
from shared.timeutil import utcnow

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=utcnow().tzinfo)
VIEWS = [("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")]


def _img(i: int, lat: str | None, view: str | None, *, state: str = "done",
         susp: int | None = 2, p_mal: float = 0.1, at: datetime = T0) -> ExamImage:
    done = state == "done"
    return ExamImage(i, lat, view, state, at, i if done else None, "normal" if done else None,
                     p_mal if done else None, susp if done else None)


def test_four_views_make_a_complete_exam_scored_by_its_worst_view() -> None:
    images = [_img(1, "L", "CC"), _img(2, "R", "CC", susp=8, p_mal=0.7),
              _img(3, "L", "MLO"), _img(4, "R", "MLO", susp=5, p_mal=0.9)]
    summary = summarise(images, timeout_s=600, now=T0)
    assert summary is not None
    assert (summary.status, summary.reason, summary.missing_views) == ("complete", "four_views", [])
    assert summary.suspicion == 8 and summary.p_malignant == pytest.approx(0.9)
    assert summary.per_breast["R"]["suspicion"] == 8
    assert summary.per_breast["R"]["p_malignant"] == pytest.approx(0.9)
    assert summary.per_breast["L"]["suspicion"] == 2 and summary.flags == []


def test_missing_views_wait_for_the_timeout_then_are_flagged_incomplete() -> None:
    images = [_img(1, "L", "CC"), _img(2, "R", "CC", at=T0 + timedelta(seconds=50))]
    assert summarise(images, timeout_s=100, now=T0 + timedelta(seconds=120)) is None
    late = summarise(images, timeout_s=100, now=T0 + timedelta(seconds=151))
    assert late is not None and late.status == "incomplete" and late.reason == "timeout"
    assert late.missing_views == ["L-MLO", "R-MLO"]
    assert any(f.startswith("incomplete: missing L-MLO, R-MLO") for f in late.flags)


def test_an_image_still_in_flight_holds_the_exam_back_even_after_the_timeout() -> None:
    images = [*(_img(i, lat, v) for i, (lat, v) in enumerate(VIEWS, 1)),
              _img(5, "L", "CC", state="processing")]
    assert summarise(images, timeout_s=1, now=T0 + timedelta(hours=2)) is None


def test_a_failed_view_is_not_awaited_the_exam_is_due_at_once_and_flagged() -> None:
    # The other three views must reach the read-first list now, not after the timeout.
    images = [_img(1, "L", "CC", susp=9, p_mal=0.7), _img(2, "R", "CC"), _img(3, "L", "MLO"),
              _img(4, "R", "MLO", state="failed")]
    summary = summarise(images, timeout_s=1800, now=T0)
    assert summary is not None and summary.status == "incomplete"
    assert summary.reason == "failed_views" and summary.suspicion == 9
    assert summary.missing_views == ["R-MLO"] and summary.n_failed == 1
    assert "incomplete: R-MLO failed, not scored" in summary.flags
    assert "1 image(s) failed and are not scored" in summary.flags
    assert not any(f.startswith("incomplete: missing") for f in summary.flags)


def test_a_failed_view_and_an_awaited_one_still_wait_for_the_timeout() -> None:
    images = [_img(1, "L", "CC"), _img(2, "R", "CC"), _img(3, "L", "MLO", state="failed")]
    assert summarise(images, timeout_s=10, now=T0 + timedelta(seconds=5)) is None
    late = summarise(images, timeout_s=10, now=T0 + timedelta(seconds=11))
    assert late is not None and late.reason == "timeout"
    assert late.missing_views == ["L-MLO", "R-MLO"]
    assert {"incomplete: missing R-MLO", "incomplete: L-MLO failed, not scored"} <= set(late.flags)


def test_an_exam_whose_four_views_all_failed_is_listed_at_once_unscored() -> None:
    images = [_img(i, lat, v, state="failed") for i, (lat, v) in enumerate(VIEWS, 1)]
    summary = summarise(images, timeout_s=1800, now=T0)
    assert summary is not None and summary.suspicion is None and summary.n_failed == 4
    assert summary.reason == "failed_views"


def test_a_supplementary_view_is_scored_but_neither_completes_the_exam_nor_hides() -> None:
    """A spot-compression magnification view stands in for no screening view: an exam
    whose L-CC is one waits for (then misses) the L-CC, and the view is named in the flags;
    its score still counts, so a finding seen only on it reaches the read-first list."""
    spot = replace(_img(1, "L", "CC", susp=8, p_mal=0.6),
                   view_flags="magnification,spot_compression")
    others = [_img(i, lat, v) for i, (lat, v) in enumerate(VIEWS[1:], 2)]
    assert summarise([spot, *others], timeout_s=100, now=T0 + timedelta(seconds=50)) is None
    late = summarise([spot, *others], timeout_s=100, now=T0 + timedelta(seconds=101))
    assert late is not None and late.status == "incomplete" and late.missing_views == ["L-CC"]
    assert late.suspicion == 8 and "L-CC" not in late.views
    assert ("L-CC (image 1) is a supplementary view (magnification, spot compression): counted "
            "in the left breast's and the exam score, not as a screening view") in late.flags
    assert late.per_breast["L"]["views"] == ["L-MLO"] and late.per_breast["L"]["suspicion"] == 8

    # Beside the four screening views it adds a flag, not a fifth view or a changed status.
    full = summarise([*(_img(i, lat, v) for i, (lat, v) in enumerate(VIEWS, 1)),
                      replace(spot, image_id=5)], timeout_s=100, now=T0)
    assert full is not None and full.status == "complete" and full.suspicion == 8
    assert full.views == sorted(f"{lat}-{v}" for lat, v in VIEWS)
    assert any("supplementary view" in f for f in full.flags)


def test_a_view_other_than_cc_or_mlo_is_flagged_and_counted_where_the_flag_says() -> None:
    """A ViewPosition the reader does not know (SPOT) is stored as OTHER; an image may know
    its side but not its view. Both count in their breast's score, so their flag says so,
    and neither stands for (or completes) a screening view."""
    spot = _img(5, "L", "OTHER", susp=9, p_mal=0.8)
    no_view = _img(6, "R", None, susp=7, p_mal=0.6)
    no_side = _img(7, None, "CC", susp=3)
    four = [_img(i, lat, v) for i, (lat, v) in enumerate(VIEWS, 1)]
    summary = summarise([*four, spot, no_view, no_side], timeout_s=10, now=T0)
    assert summary is not None and summary.status == "complete"
    assert summary.views == sorted(f"{lat}-{v}" for lat, v in VIEWS)
    assert (summary.per_breast["L"]["suspicion"], summary.per_breast["R"]["suspicion"]) == (9, 7)
    assert 5 in summary.per_breast["L"]["image_ids"] and 6 in summary.per_breast["R"]["image_ids"]
    assert all(7 not in b["image_ids"] for b in summary.per_breast.values())
    assert ("L-OTHER (image 5) is not a screening view (CC or MLO): counted in the left "
            "breast's and the exam score, not as a screening view") in summary.flags
    assert ("R (image 6) is without a view: counted in the right breast's and the exam "
            "score, not as a screening view") in summary.flags
    assert "1 image(s) without laterality: counted in the exam score only" in summary.flags
    assert not any("laterality/view" in f for f in summary.flags)
    # An OTHER view on each side is no screening pair: it stands in for no L-CC either.
    alone = summarise([spot, replace(spot, image_id=8, laterality="R")], timeout_s=10,
                      now=T0 + timedelta(seconds=11))
    assert alone is not None and alone.missing_views == list(STANDARD_VIEWS)


HEAD = {"abnormal": {"own": 1.2, "partner": -0.9, "bias": -0.4},
        "malignant": {"own": 1.0, "partner": -0.3, "bias": -0.5}}


def _scored(i: int, lat: str, view: str, probs: tuple[float, float, float], *,
            model: int = 1, head: dict[str, object] | None = HEAD) -> ExamImage:
    return ExamImage(i, lat, view, "done", T0, i, "normal", probs[2],
                     suspicion_of(probs[1], probs[2]), probs[0], probs[1], model, head)


def _expected(own: tuple[float, ...], other: tuple[float, ...]) -> tuple[float, float, float]:
    from models.bilateral import BilateralHead

    p = BilateralHead.from_config(HEAD).apply(np.array([own]), np.array([other]))[0]
    return float(p[0]), float(p[1]), float(p[2])


def test_each_breast_is_read_against_the_other_sides_same_view() -> None:
    suspicious, calm = (0.2, 0.3, 0.5), (0.6, 0.3, 0.1)
    images = [_scored(1, "L", "CC", suspicious), _scored(2, "R", "CC", calm),
              _scored(3, "L", "MLO", calm),                        # its R-MLO failed
              _img(4, "R", "MLO", state="failed")]
    summary = summarise(images, timeout_s=10, now=T0 + timedelta(seconds=11))
    assert summary is not None
    left, right = _expected(suspicious, calm), _expected(calm, suspicious)
    assert summary.per_breast["L"]["bilateral"] and summary.per_breast["R"]["bilateral"]
    assert summary.per_breast["R"]["suspicion"] == suspicion_of(right[1], right[2])
    assert summary.per_breast["R"]["p_malignant"] == pytest.approx(right[2])
    # The left breast's worst view is its CC, re-read; its MLO had no partner and kept its own.
    assert summary.per_breast["L"]["suspicion"] == suspicion_of(left[1], left[2])
    assert summary.p_malignant == pytest.approx(max(left[2], calm[2]))
    reread = {i.image_id: i for i in read_against_other_breast(images)}
    assert [reread[k].read_with_other_breast for k in (1, 2, 3)] == [True, True, False]
    assert reread[3] == images[2]


def test_a_supplementary_view_is_not_read_against_the_other_breast() -> None:
    # Its partner would be a full-field view at another scale; and the standard L-CC
    # beside it keeps its own pair (two left CCs would otherwise make the pair ambiguous).
    suspicious, calm = (0.2, 0.3, 0.5), (0.6, 0.3, 0.1)
    images = [_scored(1, "L", "CC", suspicious), _scored(2, "R", "CC", calm),
              replace(_scored(3, "L", "CC", suspicious), view_flags="spot_compression")]
    reread = {i.image_id: i for i in read_against_other_breast(images)}
    assert [reread[k].read_with_other_breast for k in (1, 2, 3)] == [True, True, False]


def test_a_retake_is_flagged_and_read_against_the_other_breast_like_the_first() -> None:
    # A second L-CC (a retake; here the same exposure again): it must neither escape the
    # bilateral reading nor move the breast's score on its own, and the reader is told.
    suspicious, calm = (0.2, 0.3, 0.5), (0.6, 0.3, 0.1)
    exam = [_scored(1, "L", "CC", suspicious), _scored(2, "R", "CC", calm),
            _scored(3, "L", "MLO", calm), _scored(4, "R", "MLO", calm)]
    retake = replace(exam[0], image_id=5, prediction_id=5)
    before = summarise(exam, timeout_s=10, now=T0)
    after = summarise([*exam, retake], timeout_s=10, now=T0)
    assert before is not None and after is not None
    reread = {i.image_id: i for i in read_against_other_breast([*exam, retake])}
    assert all(i.read_with_other_breast for i in reread.values())
    assert reread[5].p_malignant == pytest.approx(reread[1].p_malignant)
    for side in ("L", "R"):
        assert (after.per_breast[side]["suspicion"], after.per_breast[side]["p_malignant"]) \
            == (before.per_breast[side]["suspicion"], before.per_breast[side]["p_malignant"])
    assert after.per_breast["L"]["image_ids"] == [1, 3, 5]
    assert "2 L-CC images (retake?): images 1, 5" in after.flags
    assert not any("retake" in f for f in before.flags)
    # A failed copy of a view (a broken transfer) scores nothing: flagged as failed only.
    failed = summarise([*exam, _img(6, "L", "CC", state="failed")], timeout_s=10, now=T0)
    assert failed is not None and not any("retake" in f for f in failed.flags)


def test_an_exam_scored_by_two_model_versions_says_so() -> None:
    # A model activated between the exam's left and right views: its breasts cannot be
    # read against each other, and the reader must know the scores are not of one model.
    images = [_scored(1, "L", "CC", (0.2, 0.3, 0.5), model=1),
              _scored(2, "R", "CC", (0.6, 0.3, 0.1), model=2),
              _scored(3, "L", "MLO", (0.6, 0.3, 0.1), model=1),
              _scored(4, "R", "MLO", (0.6, 0.3, 0.1), model=2)]
    summary = summarise(images, timeout_s=10, now=T0)
    assert summary is not None and summary.status == "complete"
    assert ("views scored by 2 different model versions (see each view's model): not read "
            "against each other") in summary.flags
    same = summarise([replace(i, model_version_id=1) for i in images], timeout_s=10, now=T0)
    assert same is not None and not any("model versions" in f for f in same.flags)


def test_no_bilateral_reading_without_a_head_or_across_model_versions() -> None:
    images = [_scored(1, "L", "CC", (0.2, 0.3, 0.5), head=None),
              _scored(2, "R", "CC", (0.6, 0.3, 0.1), head=None),
              _scored(3, "L", "MLO", (0.2, 0.3, 0.5), model=1),
              _scored(4, "R", "MLO", (0.6, 0.3, 0.1), model=2)]
    assert read_against_other_breast(images) == images
    summary = summarise(images, timeout_s=10, now=T0)
    assert summary is not None
    assert not summary.per_breast["L"]["bilateral"] and not summary.per_breast["R"]["bilateral"]


# 1.8.0's head (models/default/1.8.0/metadata.json): fitted on mini-MIAS, whose findings are
# nearly all one-sided, it lowers a breast's P(abnormal) when the other breast's is high.
HEAD_1_8_0 = {"abnormal": {"own": 1.0317311001875396, "partner": -0.6919775201924726,
                           "bias": -0.4438632742612656}, "malignant": None}
MALIGNANT, NORMAL = (0.05, 0.05, 0.9), (0.9, 0.08, 0.02)


def test_a_finding_in_each_breast_lowered_by_the_other_is_flagged_with_its_own_score() -> None:
    """A cancer in each breast: each is read against the other's and scored lower (the
    validated scores stay), but each breast keeps its own-view score and is flagged."""
    exam = [_scored(1, "L", "CC", MALIGNANT, head=HEAD_1_8_0),
            _scored(2, "R", "CC", MALIGNANT, head=HEAD_1_8_0)]
    summary = summarise(exam, timeout_s=10, now=T0 + timedelta(seconds=11))
    assert summary is not None
    own = suspicion_of(MALIGNANT[1], MALIGNANT[2])
    for side, other in (("L", "right"), ("R", "left")):
        breast = summary.per_breast[side]
        assert breast["bilateral"] and breast["suspicion"] < own == breast["own_suspicion"] == 10
        assert breast["own_p_malignant"] == pytest.approx(0.9)
        assert breast["p_malignant"] < 0.9
        assert (f"{side} breast: suspicion 10 alone, {breast['suspicion']} read against the "
                f"{other} breast (a finding in the other breast lowers this one's score): "
                "read both") in summary.flags
    assert summary.suspicion == summary.per_breast["L"]["suspicion"] < 10  # kept as validated
    reread = {i.image_id: i for i in read_against_other_breast(exam)}
    assert (reread[1].own_suspicion, reread[1].suspicion_alone) == (10, 10)
    assert reread[1].p_malignant_alone == pytest.approx(0.9)


def test_a_breast_raised_or_lowered_below_a_finding_by_the_other_is_not_flagged() -> None:
    # One-sided: the normal other breast raises the finding, and the normal breast's own
    # views called nothing (suspicion under FINDING_ALONE), so lowering it hides nothing.
    exam = [_scored(1, "L", "CC", MALIGNANT, head=HEAD_1_8_0),
            _scored(2, "R", "CC", NORMAL, head=HEAD_1_8_0)]
    summary = summarise(exam, timeout_s=10, now=T0 + timedelta(seconds=11))
    assert summary is not None
    assert summary.per_breast["L"]["suspicion"] >= summary.per_breast["L"]["own_suspicion"]
    assert summary.per_breast["R"]["own_suspicion"] < FINDING_ALONE
    assert not any("read both" in f for f in summary.flags)
    # Without a bilateral reading the own-view score is the breast's score.
    plain = summarise([replace(i, bilateral=None) for i in exam], timeout_s=10,
                      now=T0 + timedelta(seconds=11))
    assert plain is not None
    assert all(b["own_suspicion"] == b["suspicion"] for b in plain.per_breast.values())


def test_views_other_than_cc_and_mlo_are_not_read_against_each_other() -> None:
    exam = [_scored(1, "L", "OTHER", MALIGNANT), _scored(2, "R", "OTHER", NORMAL)]
    assert read_against_other_breast(exam) == exam


# -- against the database --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, settings: Settings) -> Iterator[sessionmaker[Session]]:
    url = settings.database_url if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    engine = create_db_engine(settings.model_copy(update={"database_url": url}))
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _add_image(session: Session, study_id: int, lat: str, view: str, *, n: int,
               suspicion: int | None, created: datetime) -> int:
    image = Image(identity=f"sop:1.2.{study_id}.{n}", batch_id=1, study_id=study_id,
                  source=f"/in/{n}.dcm", format="dicom", laterality=lat, view=view,
                  state="queued" if suspicion is None else "done", created_at=created)
    session.add(image)
    session.flush()
    if suspicion is not None:
        _predict(session, image.id, suspicion)
    return image.id


def _predict(session: Session, image_id: int, suspicion: int,
             probs: tuple[float, float, float] = (0.5, 0.3, 0.2)) -> None:
    session.add(Prediction(image_id=image_id, model_version_id=1, preprocessing_version="1",
                           label="normal", p_normal=probs[0], p_benign=probs[1],
                           p_malignant=probs[2], suspicion=suspicion, decode_ms=1,
                           preprocess_ms=1, infer_ms=1, forward_pass_id="x",
                           forward_pass_size=1))


def _model_version(bilateral: dict[str, object] | None = None) -> ModelVersion:
    return ModelVersion(id=1, name="m", version="1", sha256="0" * 64,
                        preprocessing_version="1", classes=["a"], input_size=[1, 1],
                        path="/m", bilateral=bilateral)


def _one_study(session: Session, bilateral: dict[str, object] | None = None) -> None:
    """Batch 1, study 1 and model version 1 (with ``bilateral`` as its head)."""
    session.add_all([Batch(id=1, name="b"), Study(id=1, study_uid="1.2.1"),
                     _model_version(bilateral)])
    session.flush()


def test_a_late_fifth_image_supersedes_the_result_and_keeps_the_old_one(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        _one_study(session)
        for n, (lat, view) in enumerate(VIEWS):
            _add_image(session, 1, lat, view, n=n, suspicion=3, created=T0)
        now = T0 + timedelta(seconds=5)
        [first] = refresh_exam_results(session, [1], timeout_s=600, now=now)
        assert (first.version, first.status, first.superseded) == (1, "complete", None)
        assert refresh_exam_results(session, [1], timeout_s=600, now=now) == []  # idempotent

        late = _add_image(session, 1, "L", "CC", n=9, suspicion=None, created=now)
        assert studies_of_images(session, [late]) == {1}
        assert refresh_exam_results(session, [1], timeout_s=600, now=now) == []  # in flight
        session.execute(update(Image).where(Image.id == late).values(state="done"))
        _predict(session, late, 9)
        [second] = refresh_exam_results(session, [1], timeout_s=600, now=now)
        assert (second.version, second.status, second.superseded) == (2, "complete", 1)
        rows = session.execute(select(ExamResult).order_by(ExamResult.version)).scalars().all()
        assert [r.superseded_at is not None for r in rows] == [True, False]
        assert (rows[0].suspicion, rows[1].suspicion) == (3, 9)
        assert rows[1].per_breast["L"]["suspicion"] == 9 and rows[1].n_images == 5
        assert studies_awaiting_result(session) == []


def test_the_stored_exam_result_knows_a_supplementary_view_from_the_database(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        _one_study(session)
        for n, (lat, view) in enumerate(VIEWS):
            image = _add_image(session, 1, lat, view, n=n, suspicion=3, created=T0)
            if (lat, view) == ("R", "MLO"):
                session.execute(update(Image).where(Image.id == image)
                                .values(view_flags="stereotactic"))
        [change] = refresh_exam_results(session, [1], timeout_s=600,
                                        now=T0 + timedelta(seconds=601))
        result = session.execute(select(ExamResult)).scalar_one()
    assert change.status == "incomplete" and result.missing_views == ["R-MLO"]
    assert any(f.startswith("R-MLO (image 4) is a supplementary view (stereotactic)")
               for f in result.flags)


def test_the_stored_exam_result_reads_breasts_with_the_model_versions_head(
        sessions: sessionmaker[Session]) -> None:
    suspicious, calm = (0.2, 0.3, 0.5), (0.6, 0.3, 0.1)
    with sessions() as session:
        _one_study(session, HEAD)
        for n, (lat, view) in enumerate(VIEWS):
            image = _add_image(session, 1, lat, view, n=n, suspicion=None, created=T0)
            session.execute(update(Image).where(Image.id == image).values(state="done"))
            probs = suspicious if (lat, view) == ("L", "CC") else calm
            _predict(session, image, suspicion_of(probs[1], probs[2]), probs)
        assert len(refresh_exam_results(session, [1], timeout_s=600, now=T0)) == 1
        result = session.execute(select(ExamResult)).scalar_one()
        left = _expected(suspicious, calm)
        assert result.per_breast["L"]["bilateral"] and result.per_breast["R"]["bilateral"]
        assert result.suspicion == suspicion_of(left[1], left[2])
        assert result.p_malignant == pytest.approx(left[2])
        # The per-image prediction rows stay as the model gave them.
        stored = session.execute(select(Prediction.p_malignant)).scalars().all()
        assert sorted(stored) == sorted([0.5, 0.1, 0.1, 0.1])
