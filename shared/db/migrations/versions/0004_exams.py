"""exam results (drop-folder exam grouping); index on images.source for scans

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-25 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('exam_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=True),
    sa.Column('p_malignant', sa.Float(), nullable=True),
    sa.Column('suspicion', sa.Integer(), nullable=True),
    sa.Column('per_breast', sa.JSON(), nullable=False),
    sa.Column('views', sa.JSON(), nullable=False),
    sa.Column('missing_views', sa.JSON(), nullable=False),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('n_failed', sa.Integer(), nullable=False),
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_exam_results_study_id_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exam_results')),
    sa.UniqueConstraint('study_id', 'version', name='uq_exam_results_study_version')
    )
    with op.batch_alter_table('exam_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exam_results_study_id'), ['study_id'], unique=False)
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index('ix_images_source', ['source'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_source')
    with op.batch_alter_table('exam_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exam_results_study_id'))
    op.drop_table('exam_results')
