"""`mammo results --label/--min-score/--model-version` match done images only: a row shows
a prediction only when its image is done, so an image queued to be scored again, or failed
since, came back under `--label malignant` with an empty label and score."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db.schema import Batch, Image, ModelVersion, Prediction
from shared.queries import ResultFilter, list_results

FILTERS = [ResultFilter(label="malignant"), ResultFilter(min_suspicion=8),
           ResultFilter(model_version="m:1"), ResultFilter(model_version="1"),
           ResultFilter(label="malignant", min_suspicion=9, batch_id=1)]


@pytest.mark.parametrize("flt", FILTERS)
def test_prediction_filters_list_only_the_images_whose_prediction_shows(
        flt: ResultFilter, each_backend_sessions: sessionmaker[Session]) -> None:
    with each_backend_sessions() as session:
        session.add_all([Batch(id=1, name="b"), ModelVersion(
            id=1, name="m", version="1", sha256="0" * 64, preprocessing_version="1",
            classes=["a"], input_size=[1, 1], path="/m")])
        session.flush()
        # Each scored malignant 10 once; then one is queued to be re-scored (a new model)
        # and one failed when re-scored (its file gone).
        for image_id, state in ((1, "done"), (2, "queued"), (3, "processing"), (4, "failed")):
            session.add(Image(id=image_id, identity=f"sha256:{image_id}", batch_id=1,
                              source=f"/in/{image_id}.png", format="png", state=state,
                              error_code="missing_file" if state == "failed" else None))
            session.flush()
            session.add(Prediction(
                image_id=image_id, model_version_id=1, preprocessing_version="1",
                label="malignant", p_normal=0.05, p_benign=0.05, p_malignant=0.9,
                suspicion=10, decode_ms=1, preprocess_ms=1, infer_ms=1, forward_pass_id="x",
                forward_pass_size=1))
        session.flush()
        rows = list_results(session, flt)
        every = list_results(session, ResultFilter(batch_id=1))
    assert [(r["image_id"], r["label"], r["suspicion"], r["model_version"]) for r in rows] == [
        (1, "malignant", 10, "m:1")]
    # Unfiltered, each image is still listed, the others without a prediction.
    assert [(r["image_id"], r["label"]) for r in every] == [
        (1, "malignant"), (2, None), (3, None), (4, None)]
