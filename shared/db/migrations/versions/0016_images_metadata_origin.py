"""images.metadata_origin: whether an image's laterality, view and exam were stated or inferred

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-16 10:00:00
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0014'
branch_labels = None
depends_on = None

# Rows already registered keep NULL, taken as stated (a manifest row, a DICOM header): a file
# sent again with other values stays a uid_conflict, as before. Marked inferred here only
# what the stored values show was given nothing a manifest row states, for a file known by
# its bytes (a PNG, JPEG, TIFF or PGM, not refused unread):
# - 'none': read alone with no laterality, view, label or pixel spacing (a manifest row
#   giving none of them stated nothing that a later row could contradict);
# - 'filename': a mini-MIAS name (mdbNNN.png|.pgm) read alone with exactly what its name
#   gives (even = left, odd = right, MLO, 0.2 mm pixels) and no label. A manifest row
#   stating just these values cannot be told apart, and is taken as the name's.
_NONE = sa.text(
    "UPDATE images SET metadata_origin = 'none' WHERE identity LIKE 'sha256:%'"
    " AND format NOT IN ('dicom', 'unknown') AND study_id IS NULL AND laterality IS NULL"
    " AND view IS NULL AND reference_label IS NULL AND spacing_row_mm IS NULL"
    " AND spacing_column_mm IS NULL AND metadata_origin IS NULL")
_MINI_MIAS_CANDIDATES = sa.text(
    "SELECT id, source, laterality, spacing_row_mm, spacing_column_mm FROM images"
    " WHERE identity LIKE 'sha256:%' AND format IN ('png', 'pgm') AND study_id IS NULL"
    " AND view = 'MLO' AND laterality IN ('L', 'R') AND reference_label IS NULL"
    " AND metadata_origin IS NULL")
_MINI_MIAS = re.compile(r"^mdb(\d{3})\.(png|pgm)$", re.IGNORECASE)
_MINI_MIAS_SPACING_MM = 0.2
_BLOCK = 500


def _by_its_name(source: str, laterality: str, spacing: tuple[float | None, ...]) -> bool:
    match = _MINI_MIAS.match(PurePosixPath(source).name)
    if match is None:
        return False
    side = "L" if int(match.group(1)) % 2 == 0 else "R"
    return side == laterality and all(
        value is not None and abs(value - _MINI_MIAS_SPACING_MM) < 1e-9 for value in spacing)


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata_origin', sa.String(length=16), nullable=True))
    bind = op.get_bind()
    bind.execute(_NONE)
    named = [row.id for row in bind.execute(_MINI_MIAS_CANDIDATES)
             if _by_its_name(row.source, row.laterality,
                             (row.spacing_row_mm, row.spacing_column_mm))]
    for start in range(0, len(named), _BLOCK):
        bind.execute(sa.text("UPDATE images SET metadata_origin = 'filename' WHERE id IN :ids")
                     .bindparams(sa.bindparam("ids", expanding=True)),
                     {"ids": named[start:start + _BLOCK]})


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('metadata_origin')
