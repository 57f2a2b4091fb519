"""predictions (image_id, id) and created_at indexes: per-image latest/first lookups and recent workers

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-18 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0018'
# On the images branch (0016): an index of its own, independent of the predictions branch's
# migrations (0015, 0017), which stays a head of its own.
down_revision = '0016'
branch_labels = None
depends_on = None


# (image_id, id): an image's first or latest prediction (min/max id of the image) read from
# the index alone. With image_id only, PostgreSQL before its first ANALYZE answered max(id)
# of an image by walking the primary key backwards until that image came up: 12 ms per
# image on a year's 323,000 predictions (the batch notice, the worklist's exam views,
# `mammo status`'s pace). created_at: the predictions of the last minutes
# (``shared.queries.workers_seen``, `mammo status` and --health), which scanned them all.
# Plain CREATE INDEX, inside the migration's one transaction: it blocks writes to
# predictions for the seconds it takes (a second or two for a year), as any migration does.
def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index('ix_predictions_image_id_id', ['image_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_predictions_created_at'), ['created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predictions_created_at'))
        batch_op.drop_index('ix_predictions_image_id_id')
