"""Images scored outside any exam: read alone.

An image without a study (a PNG, JPEG, TIFF or PGM sent without a manifest ``study_id``, a
mini-MIAS file read in place) is scored, but no exam result ever holds it: the worklist,
the batch summary's read-first list and the alerts, which read exam results, never saw it,
and a suspicion-8 image reached no reader. They list and alert it on its own score, as an
exam of its own, by this one query, so they never disagree about which images those are.
One that failed (``failed_alone``) is listed too, unscored, as an exam whose every view
failed is: otherwise it vanished from the worklist without a trace.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select

from shared.db.schema import Image, Prediction
from shared.enums import ImageState
from shared.queries import with_latest_prediction

# The flag of every such row and alert: what a reader must know before trusting its score.
READ_ALONE_FLAG = ("read alone: this image belongs to no exam (no study ID), so its other "
                   "views were not compared and no other breast was read against it; the "
                   "score is this image's own")
# Its status where an exam's says complete or incomplete.
READ_ALONE_STATUS = "image alone"


def scored_alone(*columns: Any) -> Select[Any]:
    """``columns`` of each done image without a study, joined to its current (latest)
    prediction and that prediction's model: the images the worklist lists and the alerts
    fire for on their own."""
    return (with_latest_prediction(select(*columns).select_from(Image))
            .where(Image.study_id.is_(None), Image.state == ImageState.DONE.value,
                   Prediction.id.is_not(None)))


def failed_alone(*columns: Any) -> Select[Any]:
    """``columns`` of each failed image without a study: the worklist lists it, unscored,
    as it lists an exam whose every view failed (no alert: there is no score)."""
    return (select(*columns).select_from(Image)
            .where(Image.study_id.is_(None), Image.state == ImageState.FAILED.value))


def failed_alone_flag(error_code: str | None, error_message: str | None) -> str:
    """The flag of a failed image of no exam: why it has no score."""
    message = (error_message or "").rstrip(". ")
    reason = ": ".join(filter(None, [error_code, message])) or "no reason recorded"
    return f"failed, not scored: {reason}; this image belongs to no exam (no study ID)"


def model_label(name: str, version: str) -> str:
    """NAME:VERSION, as result rows name a prediction's model."""
    return f"{name}:{version}"

