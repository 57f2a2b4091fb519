"""studies.exam_inputs_seq / exam_result_seq: an exam refresh owed by a save, kept durably

Revision ID: 0010
Revises: 0004
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0004'
branch_labels = None
depends_on = None

# An exam result computed before one of its images finished may lack that view: its refresh
# was skipped (a busy database) or never ran (the worker died), and nothing redid it. Mark
# those as owed, so the first follow-up after the upgrade recomputes them (a refresh whose
# inputs did not change writes nothing); exams refreshed after their last image are not.
_OWED_BEFORE_UPGRADE = sa.text(
    "UPDATE studies SET exam_inputs_seq = 1 WHERE EXISTS ("
    " SELECT 1 FROM images JOIN exam_results ON exam_results.study_id = images.study_id"
    " WHERE images.study_id = studies.id AND exam_results.superseded_at IS NULL"
    " AND images.finished_at >= exam_results.created_at)")


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('exam_inputs_seq', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('exam_result_seq', sa.Integer(), server_default='0',
                                      nullable=False))
    op.execute(_OWED_BEFORE_UPGRADE)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('exam_result_seq')
        batch_op.drop_column('exam_inputs_seq')
