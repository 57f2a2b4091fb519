"""Read-only checks on what a pipeline run left in the database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import Ingestion, create_batch, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image, Prediction
from shared.db.upsert import insert_missing
from shared.enums import Priority


@dataclass(frozen=True)
class Tally:
    images: int
    done: int
    failed: int
    processing: int  # claimed by a worker, not finished
    predictions: int
    max_predictions_per_image: int
    predicted_images: int  # images with at least one prediction
    failures: dict[str, str]  # source -> error_code

    @property
    def terminal(self) -> int:
        return self.done + self.failed

    def lost(self, expected: int) -> int:
        """Submitted images without a final outcome (done, or failed with a reason)."""
        return max(expected - self.terminal, 0)

    @property
    def duplicated(self) -> int:
        """Predictions beyond the first for an image."""
        return self.predictions - self.predicted_images


def image_outcomes(url: str) -> list[tuple[str, str | None, int]]:
    """(state, error code, attempts) of every image, sorted."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Image.state, Image.error_code, Image.attempts)).all()
    finally:
        engine.dispose()
    return sorted((str(s), e, int(a)) for s, e, a in rows)


def tally(url: str) -> Tally:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(
                select(Image.state, func.count()).group_by(Image.state)).all())
            per_image = conn.execute(select(func.count()).select_from(Prediction)
                                     .group_by(Prediction.image_id)).scalars().all()
            failures = dict(conn.execute(select(Image.source, Image.error_code)
                                         .where(Image.state == "failed")).all())
    finally:
        engine.dispose()
    return Tally(images=sum(states.values()), done=states.get("done", 0),
                 failed=states.get("failed", 0), processing=states.get("processing", 0),
                 predictions=sum(per_image),
                 max_predictions_per_image=max(per_image, default=0),
                 predicted_images=len(per_image),
                 failures={str(k): str(v) for k, v in failures.items()})


def schema_sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``settings``' database with the schema in place; the engine is disposed
    when the generator is closed or runs out. A fixture's whole body is
    ``yield from schema_sessions(settings)``: pytest resumes it after the test."""
    engine = create_db_engine(settings)
    ensure_schema(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def queued_batch(sessions: sessionmaker[Session], name: str, n: int,
                 priority: Priority = Priority.ROUTINE) -> tuple[int, list[int]]:
    """(batch id, image ids) of a batch of ``n`` queued images whose messages were never
    seen (no files behind them): for queue, priority and status tests."""
    batch_id = create_batch(sessions, name=name, priority=priority, mode="distributed")
    with sessions() as session:
        rows = [{"identity": f"sha256:{name}-{i}", "batch_id": batch_id, "attempts": 0,
                 "source": f"/in/{name}/{i}.png", "format": "png", "state": "queued"}
                for i in range(n)]
        ids = insert_missing(session, Image, rows, conflict=("identity",), returning=Image.id)
        session.commit()
    return batch_id, sorted(ids)


def registered_batch(sessions: sessionmaker[Session], files: list[Path],
                     ingestion: Ingestion) -> int:
    """A batch of ``files`` registered as a producer registers them; its id."""
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    register_files(sessions, batch, files, ingestion=ingestion)
    return batch


def stored_images(sessions: sessionmaker[Session]) -> list[Image]:
    """Every stored image, in id order."""
    with sessions() as session:
        return list(session.execute(select(Image).order_by(Image.id)).scalars())
