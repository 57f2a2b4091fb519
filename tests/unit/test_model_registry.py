"""Activation lives in the database; an explicit MAMMO_MODEL always wins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.activation import activate, active_version, model_for
from models.registry import resolve_model, shipped_models
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.errors import ModelNotFoundError


def _copy_as(src: Path, root: Path, name: str, version: str) -> Path:
    target = root / name / version
    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(name=name, version=version)
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def test_activation_switches_the_default_and_explicit_setting_wins(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    root = tmp_path / "models"
    first = _copy_as(tiny_model_dir, root, "m", "1.0.0")
    second = _copy_as(tiny_model_dir, root, "m", "1.1.0")
    assert [s.version for s in shipped_models(root)] == ["1.1.0", "1.0.0"]
    default = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    explicit = default.model_copy(update={"model": str(second)})
    engine = create_db_engine(default)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    with sessions() as session:
        assert active_version(session) is None
        activate(session, resolve_model(str(second)))
        activate(session, resolve_model(str(first)))  # the latest activation wins alone
        session.commit()
    with sessions() as session:
        active = active_version(session)
        assert active is not None and active.version == "1.0.0"
        assert model_for(default, session).directory == first
        assert model_for(explicit, session).directory == second
    engine.dispose()


def test_an_activated_model_whose_directory_is_gone_is_not_used(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    gone = _copy_as(tiny_model_dir, tmp_path, "m", "2.0.0")
    settings = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        activate(session, resolve_model(str(gone)))
        session.commit()
        assert model_for(settings, session).directory == gone
        shutil.rmtree(gone)
        try:  # the shipped default, when this checkout has one
            assert model_for(settings, session).directory != gone
        except ModelNotFoundError as exc:
            assert "MAMMO_MODEL" in str(exc)
    engine.dispose()
