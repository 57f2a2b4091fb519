"""Which model workers run when ``MAMMO_MODEL`` is not set: the database says.

``mammo models activate`` registers a model version (name, version, sha256, path) and marks
it active; every worker sharing the database then loads exactly that directory (like the
images' paths, model paths must be shared). Where that directory is missing, or no longer
holds the activated model, every process refuses (exit 5) rather than score with another
model. An explicit ``MAMMO_MODEL`` always wins, even ``MAMMO_MODEL=default`` (the shipped
default, as ``--model default`` is), and without an activation the shipped default is used.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.bilateral import bilateral_head
from models.registry import ModelSpec, resolve_model
from shared.config import Settings
from shared.db.schema import ModelVersion
from shared.db.upsert import upsert, upsert_returning_id
from shared.errors import ModelIntegrityError, ModelNotFoundError

IDENTITY = ("name", "version", "sha256")
# What activation takes from the directory it names, even when the identity is registered.
FROM_DIRECTORY = ("path", "preprocessing_version", "classes", "input_size", "bilateral")


def _row(spec: ModelSpec) -> dict[str, object]:
    return {
        "name": spec.name, "version": spec.version, "sha256": spec.sha256,
        "preprocessing_version": spec.preprocessing_version, "classes": list(spec.classes),
        "input_size": list(spec.input_size), "path": str(spec.directory.resolve()),
        "bilateral": None if (head := bilateral_head(spec.metadata)) is None
        else head.to_config(),
    }


def register(session: Session, spec: ModelSpec) -> int:
    """The model version's row id, inserting the row on first use (a worker running a copy
    elsewhere finds the same row and leaves its path alone). Caller commits."""
    return upsert_returning_id(session, ModelVersion, _row(spec), conflict=IDENTITY)


def activate(session: Session, spec: ModelSpec) -> int:
    """Make ``spec``'s directory the one active model; returns its row id. Caller commits.

    The row of an identity registered before (from another directory, a copy) is pointed
    at this directory: activation names exactly the directory it was given."""
    upsert(session, ModelVersion, [_row(spec)], conflict=IDENTITY, update=FROM_DIRECTORY)
    row_id = register(session, spec)
    session.execute(update(ModelVersion).values(active=ModelVersion.id == row_id))
    return row_id


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()


def model_for(settings: Settings, session: Session) -> ModelSpec:
    """The model a process with ``settings`` must run: ``MAMMO_MODEL`` when it is set (in
    the environment, ``.env`` or by the caller, even to ``default``, which then names the
    shipped model), else the activated model, else the shipped default."""
    if "model" not in settings.model_fields_set:
        active = active_version(session)
        if active is not None:
            return _activated(active)
    return resolve_model(settings.model)


def _activated(active: ModelVersion) -> ModelSpec:
    """The activated model's spec, refused when its directory is gone or holds another."""
    named = f"{active.name} {active.version} (sha256 {active.sha256[:12]})"
    fix = ("`mammo models activate` another model (`mammo models activate default`: the "
           "shipped one) or restore it")
    if not Path(active.path).is_dir():
        raise ModelNotFoundError(
            f"The activated model {named} is missing: {active.path} is not a directory on "
            f"this machine. {fix}; no other model is used in its place.")
    spec = resolve_model(active.path, named_by="the model activated in the database")
    if (spec.name, spec.version, spec.sha256) != (active.name, active.version, active.sha256):
        raise ModelIntegrityError(
            f"{active.path} no longer holds the activated model {named}: it holds "
            f"{spec.name} {spec.version} (sha256 {spec.sha256[:12]}). {fix}.")
    return spec
