"""model registry activation flag; compact heatmap per prediction

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('active', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heatmap_png', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('heatmap_png')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('active')
