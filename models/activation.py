"""Which model workers run when ``MAMMO_MODEL`` is left at its default: the database says.

``mammo models activate`` registers a model version (name, version, sha256, path) and marks
it active; every worker sharing the database then loads it, provided the path exists on
that machine (like the images' paths, model paths must be shared). An explicit
``MAMMO_MODEL`` always wins, and without an activation the shipped default is used.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.bilateral import bilateral_head
from models.registry import ModelSpec, resolve_model
from shared.config import DEFAULT_MODEL, Settings
from shared.db.schema import ModelVersion
from shared.db.upsert import upsert_returning_id


def register(session: Session, spec: ModelSpec) -> int:
    """The model version's row id, inserting the row on first use. Caller commits."""
    return upsert_returning_id(session, ModelVersion, {
        "name": spec.name, "version": spec.version, "sha256": spec.sha256,
        "preprocessing_version": spec.preprocessing_version, "classes": list(spec.classes),
        "input_size": list(spec.input_size), "path": str(spec.directory.resolve()),
        "bilateral": None if (head := bilateral_head(spec.metadata)) is None
        else head.to_config(),
    }, conflict=("name", "version", "sha256"))


def activate(session: Session, spec: ModelSpec) -> int:
    """Make ``spec`` the one active model version; returns its row id. Caller commits."""
    row_id = register(session, spec)
    session.execute(update(ModelVersion).values(active=ModelVersion.id == row_id))
    return row_id


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()


def model_for(settings: Settings, session: Session) -> ModelSpec:
    """The model a process with ``settings`` must run."""
    if settings.model == DEFAULT_MODEL:
        active = active_version(session)
        if active is not None and Path(active.path).is_dir():
            return resolve_model(active.path, named_by="the model activated in the database")
    return resolve_model(settings.model)
