"""predictions.label: the current rule applied to the probabilities that earlier releases stored

Revision ID: 0017
Revises: 0015, 0010
Create Date: 2026-12-17 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
# The predictions branch (0015), merged with 0010: the exams it owes a refresh are marked on
# studies.exam_inputs_seq. (A depends_on would leave 0010 out of the version table while
# the scripts still name it a head, and every start would try to migrate again.)
down_revision = ('0015', '0010')
branch_labels = None
depends_on = None


# Releases before the label rule (shared.scoring.label_indices) labelled a view by its most
# probable class: 'normal' at P(normal) 0.40 beside P(benign) 0.35 and P(malignant) 0.25,
# an abnormal probability of 0.60 shown as a clearance by results, reports and the worklist,
# and `mammo rescore` leaves them (same model version). The rule, in SQL: normal only at
# P(normal) >= 0.5, else the more probable of benign and malignant, a tie malignant. Stored
# probabilities are the floats the label was computed from (worker.pipeline), so applying it
# here gives what label_of gives. A row whose probabilities are not all in [0, 1] (NaN:
# PostgreSQL orders it above every number, so `NaN >= 0.5` is true there) is left alone.
def _rule(p: str) -> str:
    return (f"CASE WHEN {p}.p_normal >= 0.5 THEN 'normal'"
            f" WHEN {p}.p_benign > {p}.p_malignant THEN 'benign' ELSE 'malignant' END")


def _differs(p: str) -> str:
    return (f"{p}.label <> {_rule(p)}"
            f" AND {p}.p_normal BETWEEN 0 AND 1 AND {p}.p_benign BETWEEN 0 AND 1"
            f" AND {p}.p_malignant BETWEEN 0 AND 1")


# The studies whose exam result reads a relabelled view: an image's current prediction is its
# newest (shared.rescoring), the one the exam refresh reads.
_RELABELLED_STUDIES = (
    "SELECT i.study_id FROM images i JOIN predictions p ON p.image_id = i.id"
    f" WHERE i.study_id IS NOT NULL AND {_differs('p')}"
    " AND NOT EXISTS (SELECT 1 FROM predictions q WHERE q.image_id = p.image_id"
    " AND q.id > p.id)")

# Their exams are recomputed by the exam refresh (shared.exams), not edited here: each is
# owed a refresh (0010: exam_inputs_seq above exam_result_seq; read commands and the workers'
# sweeper do it), and its current result's signature, computed over prediction ids that a
# relabel keeps, no longer matches, so the refresh writes a new version with the new views'
# labels and keeps the old one superseded, as after any change of its views.
_OWED = sa.text(
    "UPDATE studies SET exam_inputs_seq = exam_inputs_seq + 1"
    f" WHERE id IN ({_RELABELLED_STUDIES})")
_STALE = sa.text(
    "UPDATE exam_results SET signature = 'relabelled by migration 0017'"
    f" WHERE superseded_at IS NULL AND study_id IN ({_RELABELLED_STUDIES})")
_RELABEL = sa.text(
    f"UPDATE predictions SET label = {_rule('predictions')} WHERE {_differs('predictions')}")


def upgrade() -> None:
    # In this order: the exams are found from the labels still to change. Run again, it
    # finds nothing to change.
    op.execute(_OWED)
    op.execute(_STALE)
    op.execute(_RELABEL)


def downgrade() -> None:
    # The schema is unchanged, and the top-class labels are not restored: they were wrong.
    pass
