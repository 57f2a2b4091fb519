"""ingestion metadata on images (spacing, view flags, burned-in, VOI, reference label);
duplicate submissions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spacing_row_mm', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('spacing_column_mm', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('view_flags', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('burned_in_annotation', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('voi', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('reference_label', sa.String(length=16), nullable=True))
    op.create_table('duplicate_submissions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_duplicate_submissions_batch_id_batches')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_duplicate_submissions_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_duplicate_submissions'))
    )
    with op.batch_alter_table('duplicate_submissions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_duplicate_submissions_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_duplicate_submissions_image_id'), ['image_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('duplicate_submissions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_duplicate_submissions_image_id'))
        batch_op.drop_index(batch_op.f('ix_duplicate_submissions_batch_id'))
    op.drop_table('duplicate_submissions')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('reference_label')
        batch_op.drop_column('voi')
        batch_op.drop_column('burned_in_annotation')
        batch_op.drop_column('view_flags')
        batch_op.drop_column('spacing_column_mm')
        batch_op.drop_column('spacing_row_mm')
