"""images.pixel_fingerprint: a reused SOP Instance UID on other pixels is a clash, not a copy

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-14 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0011'
branch_labels = None
depends_on = None


# Rows already registered keep NULL: a file sent again under their UID is compared by its
# header alone, as before (a copy unless its size, side, view, exam or patient differ).
def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pixel_fingerprint', sa.String(length=128),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('pixel_fingerprint')
