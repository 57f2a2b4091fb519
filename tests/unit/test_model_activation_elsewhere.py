"""A model activated on one machine, used by a worker installed at another path.

The activation stores the activating machine's directory; another host (or a container with
the package in site-packages) lacks it but ships the identical model. It loads its own
copy, checked by the sha256 of its weights, and refuses as before when no copy matches.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import models.activation
from models.activation import activate, model_for
from models.registry import MODELS_ROOT, resolve_model, sealed, shipped_models
from shared.config import Settings
from shared.errors import ModelNotFoundError
from tests.helpers.db import schema_sessions

SHIPPED = MODELS_ROOT / "default" / "1.7.0"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _activate_then_remove(sessions: sessionmaker[Session], source: Path, host: Path) -> Path:
    """Activate a copy of ``source`` made under ``host`` (the other machine's install),
    then take that install away, as `mammo models show` on this machine then sees it."""
    there = host / "models" / source.parent.name / source.name
    shutil.copytree(source, there)
    with sessions() as session:
        activate(session, resolve_model(str(there)))
        session.commit()
    shutil.rmtree(host)
    return there.resolve()


def test_a_worker_elsewhere_uses_its_identical_shipped_copy(
        tmp_path: Path, settings: Settings, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    gone = _activate_then_remove(sessions, SHIPPED, tmp_path / "hostA")
    with sessions() as session, caplog.at_level(logging.INFO, "models.activation"):
        spec = model_for(settings, session)
    assert spec.directory == SHIPPED
    assert (spec.name, spec.version) == ("default", "1.7.0")
    used = [r.getMessage() for r in caplog.records if str(SHIPPED) in r.getMessage()]
    assert used and str(gone) in used[0], caplog.text


def test_a_shipped_namesake_with_other_weights_is_not_used(
        tmp_path: Path, tiny_model_dir: Path, settings: Settings,
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine "ships" m 1.0.0 whose metadata names the activated sha256, but whose
    # model.keras is other bytes: the metadata alone must not make it the same model.
    source = tmp_path / "source" / "m" / "1.0.0"
    shutil.copytree(tiny_model_dir, source)
    meta = json.loads((source / "metadata.json").read_text())
    meta.update(name="m", version="1.0.0")
    (source / "metadata.json").write_text(json.dumps(sealed(meta)))
    local_root = tmp_path / "local"
    shutil.copytree(source.parent.parent, local_root)
    with (local_root / "m" / "1.0.0" / "model.keras").open("ab") as weights:
        weights.write(b"\0")
    monkeypatch.setattr(models.activation, "shipped_models", lambda: shipped_models(local_root))
    assert [s.sha256 for s in shipped_models(local_root)] == [meta["sha256"]]

    gone = _activate_then_remove(sessions, source, tmp_path / "hostA")
    with sessions() as session, pytest.raises(ModelNotFoundError) as refused:
        model_for(settings, session)
    message = str(refused.value)
    assert f"{gone} is not a directory on this machine" in message
    assert "no model shipped here has that name, version and sha256" in message
    assert "mammo models activate" in message and "\n" not in message
