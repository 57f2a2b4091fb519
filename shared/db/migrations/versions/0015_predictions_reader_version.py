"""predictions.reader_version: which readers read the file, for `mammo rescore --reread`

Revision ID: 0015
Revises: 0009
Create Date: 2026-12-15 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0009'
branch_labels = None
depends_on = None


# Predictions already stored keep NULL: an earlier release's readers made them, which
# `mammo rescore --reread` re-scores (shared.imaging.reader_version).
def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reader_version', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('reader_version')
