"""model_versions.metadata_seal: one name, version and weights is one sealed model

Revision ID: 0012
Revises: 0007
Create Date: 2026-12-11 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0007'
branch_labels = None
depends_on = None

_model_versions = sa.table("model_versions", sa.column("id", sa.Integer),
                           sa.column("active", sa.Boolean))


# Rows registered before keep NULL: the next registration or activation of their model
# records its seal (models.activation). Two rows left active by activations that raced
# before they were serialised: the later registered one stays, the one every process read.
def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata_seal', sa.String(length=80), nullable=True))
    latest_active = (sa.select(sa.func.max(_model_versions.c.id))
                     .where(_model_versions.c.active.is_(True)).scalar_subquery())
    op.execute(_model_versions.update()
               .where(_model_versions.c.active.is_(True), _model_versions.c.id < latest_active)
               .values(active=False))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('metadata_seal')
