"""notifications.image_id: the alert of an image scored outside any exam

Revision ID: 0013
Revises: 0006
Create Date: 2026-12-12 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0006'
branch_labels = None
depends_on = None


# Rows already recorded are batch summaries and exam alerts: NULL, as they stay.
def upgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_notifications_image_id_images'), 'images',
                                    ['image_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_notifications_image_id_images'),
                                 type_='foreignkey')
        batch_op.drop_column('image_id')
