"""Record submitted files in the database before anything is queued.

The database row is committed first and the wake-up message sent second, so a crash between
the two leaves a ``queued`` row that ``mammo recover`` finds, never a message without a row.
Identity (SOPInstanceUID, else a content hash) plus ``INSERT ... ON CONFLICT DO NOTHING``
makes resubmission a no-op, even when two producers race.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.schema import Batch, Image, Study
from shared.db.upsert import insert_missing, upsert_returning_id
from shared.enums import ImageState, Priority
from shared.errors import InputError
from shared.imaging.readers import read_header
from shared.imaging.types import ImageHeader
from shared.timeutil import utcnow

BLOCK = 500


@dataclass
class Registration:
    batch_id: int
    new_ids: list[int] = field(default_factory=list)
    rejected_ids: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)  # source, id, state

    @property
    def unfinished_duplicate_ids(self) -> list[int]:
        active = (ImageState.QUEUED.value, ImageState.PROCESSING.value)
        return [image_id for _, image_id, state in self.duplicates if state in active]


def content_identity(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return f"path:{path}"
    return f"sha256:{digest.hexdigest()}"


def create_batch(sessions: sessionmaker[Session], *, name: str | None, priority: Priority,
                 mode: str) -> int:
    with sessions() as session:
        batch = Batch(name=name, priority=priority.value, mode=mode)
        session.add(batch)
        session.commit()
        return batch.id


def _row(path: Path, batch_id: int, header: ImageHeader | None, error: InputError | None,
         study_id: int | None) -> dict[str, Any]:
    now = utcnow()
    row: dict[str, Any] = {
        "batch_id": batch_id, "source": str(path), "study_id": study_id, "attempts": 0,
        "created_at": now,
    }
    if header is not None:
        row.update(
            identity=header.identity, format=header.format,
            sop_instance_uid=header.sop_instance_uid,
            series_instance_uid=header.series_instance_uid,
            laterality=header.laterality.value if header.laterality else None,
            view=header.view.value if header.view else None,
            rows=header.rows, columns=header.columns, manufacturer=header.manufacturer,
            manufacturer_model=header.manufacturer_model, state=ImageState.QUEUED.value,
        )
    else:
        assert error is not None
        row.update(identity=content_identity(path), format="unknown",
                   state=ImageState.FAILED.value, error_code=error.code.value,
                   error_message=error.message, finished_at=now)
    return row


def _study_id(session: Session, header: ImageHeader, cache: dict[str, int]) -> int | None:
    uid = header.study_instance_uid
    if not uid:
        return None
    if uid not in cache:
        cache[uid] = upsert_returning_id(session, Study, {
            "study_uid": uid, "accession_number": header.accession_number,
            "study_date": header.study_date, "created_at": utcnow(),
        }, conflict=("study_uid",))
    return cache[uid]


def register_files(
    sessions: sessionmaker[Session], batch_id: int, files: Iterable[Path], *,
    on_file: Callable[[Path], None] | None = None,
) -> Registration:
    """Insert one row per new file (queued, or failed when its header is unreadable)."""
    result = Registration(batch_id)
    block: list[Path] = []
    for path in files:
        block.append(path)
        if on_file:
            on_file(path)
        if len(block) >= BLOCK:
            _register_block(sessions, batch_id, block, result)
            block = []
    if block:
        _register_block(sessions, batch_id, block, result)
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.submitted = len(result.new_ids) + len(result.rejected_ids) + len(result.duplicates)
        batch.duplicates = len(result.duplicates)
        session.commit()
    return result


def _register_block(sessions: sessionmaker[Session], batch_id: int, block: Sequence[Path],
                    result: Registration) -> None:
    studies: dict[str, int] = {}
    with sessions() as session:
        rows: list[dict[str, Any]] = []
        for path in block:
            try:
                header: ImageHeader | None = read_header(path)
                error: InputError | None = None
            except InputError as exc:
                header, error = None, exc
            study = _study_id(session, header, studies) if header else None
            rows.append(_row(path, batch_id, header, error, study))
        rows, repeats = _split_repeats(rows)
        inserted = set(insert_missing(session, Image, rows, conflict=("identity",),
                                      returning=Image.identity))
        new = [r["identity"] for r in rows if r["identity"] in inserted]
        ids = dict(session.execute(
            select(Image.identity, Image.id).where(Image.identity.in_(new))).all())
        for row in rows:
            identity = row["identity"]
            if identity in inserted:
                target = result.new_ids if row["state"] == ImageState.QUEUED.value \
                    else result.rejected_ids
                target.append(ids[identity])
        existing = [r for r in rows if r["identity"] not in inserted] + repeats
        if existing:
            known = {i: (image_id, state) for i, image_id, state in session.execute(
                select(Image.identity, Image.id, Image.state)
                .where(Image.identity.in_([r["identity"] for r in existing])))}
            for row in existing:
                image_id, state = known[row["identity"]]
                result.duplicates.append((row["source"], image_id, state))
        session.commit()


def _split_repeats(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same image twice in one block (copied under two names): insert the first only."""
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    for row in rows:
        (repeats if row["identity"] in seen else kept).append(row)
        seen.add(row["identity"])
    return kept, repeats
