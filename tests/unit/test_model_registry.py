"""Activation lives in the database; an explicit MAMMO_MODEL always wins."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from models.activation import (
    activate,
    active_version,
    describe,
    identity_clash,
    model_for,
    register,
    resolve_ref,
)
from models.registry import resolve_model, sealed, shipped_models
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.errors import ModelIntegrityError, ModelNotFoundError


def _copy_as(src: Path, root: Path, name: str, version: str,
             folder: str | None = None) -> Path:
    target = root / (folder or name) / version
    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(name=name, version=version)
    (target / "metadata.json").write_text(json.dumps(sealed(meta)))
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


def _sessions(sqlite_url: str) -> tuple[Settings, Any, Any]:
    settings = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return settings, engine, make_session_factory(engine)


def test_an_activated_model_whose_directory_is_gone_is_refused_not_replaced(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    gone = _copy_as(tiny_model_dir, tmp_path, "m", "2.0.0")
    settings, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        activate(session, resolve_model(str(gone)))
        session.commit()
        assert model_for(settings, session).directory == gone
        shutil.rmtree(gone)
        # Never silently the shipped default: one line naming the folder and the way out.
        with pytest.raises(ModelNotFoundError) as refused:
            model_for(settings, session)
        message = str(refused.value)
        assert str(gone.resolve()) in message and "m 2.0.0" in message
        assert "mammo models activate" in message and "restore it" in message
        assert "\n" not in message
        # An explicit MAMMO_MODEL still wins.
        explicit = settings.model_copy(update={"model": str(tiny_model_dir)})
        assert model_for(explicit, session).directory == tiny_model_dir
    engine.dispose()


def test_an_activated_directory_that_now_holds_another_model_is_refused(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    place = _copy_as(tiny_model_dir, tmp_path, "m", "3.0.0")
    settings, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        activate(session, resolve_model(str(place)))
        session.commit()
        shutil.rmtree(place)
        _copy_as(tiny_model_dir, tmp_path, "m", "3.0.0")
        meta = json.loads((place / "metadata.json").read_text())
        meta["sha256"] = "0" * 64  # another model.keras copied over it
        (place / "metadata.json").write_text(json.dumps(meta))
        with pytest.raises(ModelIntegrityError, match="no longer holds the activated model"):
            model_for(settings, session)
    engine.dispose()


def test_activating_the_genuine_directory_after_a_copy_makes_it_the_active_one(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    genuine = _copy_as(tiny_model_dir, tmp_path / "genuine", "m", "4.0.0")
    copy = _copy_as(tiny_model_dir, tmp_path / "copy", "m", "4.0.0")  # same identity
    settings, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        first = activate(session, resolve_model(str(copy)))
        second = activate(session, resolve_model(str(genuine)))
        session.commit()
        assert first == second  # one identity, one row
        active = active_version(session)
        assert active is not None and active.path == str(genuine.resolve())
        assert model_for(settings, session).directory == genuine.resolve()
        # A worker running the copy registers the same row without moving the activation.
        register(session, resolve_model(str(copy)))
        session.commit()
        assert model_for(settings, session).directory == genuine.resolve()
    engine.dispose()


def test_a_bare_name_is_never_a_folder_of_the_working_directory(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    shipped = _copy_as(tiny_model_dir, root, "default", "1.0.0")
    work = tmp_path / "work"
    (work / "default" / "junk").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_model("default", root=root).directory == shipped
    assert resolve_model("default:1.0.0", root=root).directory == shipped
    # The folder is reached only as a path, and then it is that folder.
    with pytest.raises(ModelNotFoundError, match="does not hold both"):
        resolve_model("./default", root=root)
    with pytest.raises(ModelNotFoundError, match="No model found"):
        resolve_model("./default/1.0.0", root=root)
    # A model folder of the working directory given by a path still works.
    _copy_as(tiny_model_dir, work, "mine", "2.0.0")
    assert resolve_model("mine/2.0.0", root=root).version == "2.0.0"
    with pytest.raises(ModelNotFoundError, match="No model found"):
        resolve_model("mine", root=root)


def test_an_explicit_default_setting_wins_over_the_activation(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    activated = _copy_as(tiny_model_dir, tmp_path, "m", "5.0.0")
    unset, engine, sessions = _sessions(sqlite_url)
    monkeypatch.setenv("MAMMO_MODEL", "default")
    from_env = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("MAMMO_MODEL")
    given = Settings(database_url=sqlite_url, model="default", _env_file=None)  # type: ignore[call-arg]
    (tmp_path / "default" / "junk").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # a same-named folder changes nothing
    shipped = resolve_model("default").directory
    with sessions() as session:
        activate(session, resolve_model(str(activated)))
        session.commit()
        assert model_for(unset, session).directory == activated
        assert model_for(from_env, session).directory == shipped
        assert model_for(given, session).directory == shipped
    engine.dispose()


def test_name_version_finds_shipped_alternatives_and_registered_versions(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    # What `models list` shows: an alternative under models/alternatives/, and a version
    # registered in the database from a directory elsewhere.
    root = tmp_path / "models"
    _copy_as(tiny_model_dir, root, "default", "1.8.0")
    alternative = _copy_as(tiny_model_dir, root, "default", "1.6.0", folder="alternatives")
    assert resolve_model("default:1.6.0", root=root).directory == alternative
    assert resolve_model("default", root=root).version == "1.8.0"  # never an alternative
    elsewhere = _copy_as(tiny_model_dir, tmp_path / "elsewhere", "tiny", "0.1.0")
    _, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        register(session, resolve_model(str(elsewhere)))
        session.commit()
    with pytest.raises(ModelNotFoundError, match="registered"):
        resolve_model("tiny:0.1.0")  # no database: the hint says where else to look
    assert resolve_ref("tiny:0.1.0", sessions).directory == elsewhere
    assert resolve_ref("tiny/0.1.0", sessions).directory == elsewhere
    # The stored path is verified as an activation's is: another model there is refused.
    meta = json.loads((elsewhere / "metadata.json").read_text())
    (elsewhere / "metadata.json").write_text(json.dumps(sealed({**meta, "version": "0.2.0"})))
    with pytest.raises(ModelNotFoundError, match=r"no longer holds the registered tiny 0\.1\.0"):
        resolve_ref("tiny:0.1.0", sessions, named_by="REF")
    with pytest.raises(ModelNotFoundError, match="No model found for REF='tiny:9'"):
        resolve_ref("tiny:9", sessions, named_by="REF")
    engine.dispose()


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_model_setting_leaves_the_model_to_the_activation(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str, blank: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `export MAMMO_MODEL=` in a service file, or `MAMMO_MODEL=` in .env: not chosen, as a
    # blank MAMMO_SMTP_HOST is not configured.
    activated = _copy_as(tiny_model_dir, tmp_path, "m", "5.0.0")
    _, engine, sessions = _sessions(sqlite_url)
    monkeypatch.setenv("MAMMO_MODEL", blank)
    from_env = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    monkeypatch.delenv("MAMMO_MODEL")
    (tmp_path / ".env").write_text(f"MAMMO_MODEL={blank}\n")
    from_file = Settings(database_url=sqlite_url, _env_file=tmp_path / ".env")  # type: ignore[call-arg]
    with sessions() as session:
        assert model_for(from_env, session).directory == resolve_model("default").directory
        activate(session, resolve_model(str(activated)))
        session.commit()
        assert model_for(from_env, session).directory == activated
        assert model_for(from_file, session).directory == activated
    engine.dispose()


def test_an_identity_clash_is_new_weights_under_a_taken_name_and_version(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    mine = resolve_model(str(_copy_as(tiny_model_dir, tmp_path, "mine", "1.0.0")))
    other_weights = dataclasses.replace(mine, sha256="ab" * 32, directory=tmp_path / "other")
    shipped = resolve_model("default")
    as_shipped = resolve_model(str(_copy_as(tiny_model_dir, tmp_path / "s", "default",
                                            shipped.version)))
    _, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        assert identity_clash(session, mine) is None  # a name and version nobody holds
        assert describe(session, mine) == "mine 1.0.0"
        register(session, other_weights)
        clash = identity_clash(session, mine)
        assert clash is not None and f"the registered {tmp_path / 'other'}" in clash
        assert f"(sha256 {'ab' * 6})" in clash and "--version NEW" in clash
        assert describe(session, mine) == f"mine 1.0.0 (sha256 {mine.sha256[:12]})"
        clash = identity_clash(session, as_shipped)
        assert clash is not None and f"the shipped {shipped.directory}" in clash
        with pytest.raises(ModelNotFoundError, match=r"this model is refused: .* the registered"):
            register(session, mine)  # never registered: it would be a second mine 1.0.0
        assert identity_clash(session, shipped) is None
    engine.dispose()


def _legacy_rows(session: Any, *specs: Any) -> None:
    """What a database from before scoring refused namesakes may hold: ``specs`` registered
    as they are, two of one name and version among them."""
    from models.activation import _row
    from shared.db.schema import ModelVersion

    session.add_all(ModelVersion(**_row(spec)) for spec in specs)
    session.flush()


def test_a_registered_model_is_activatable_only_as_the_one_of_its_name_and_version(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    mine = resolve_model(str(_copy_as(tiny_model_dir, tmp_path, "mine", "1.0.0")))
    settings, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        # Rollback: the only model registered as mine 1.0.0 is activated again after another.
        activate(session, mine)
        activate(session, resolve_model("default"))
        assert identity_clash(session, mine) is None
        activate(session, mine)
        assert active_version(session).sha256 == mine.sha256  # type: ignore[union-attr]
        # A second mine 1.0.0 with other weights, registered before this was refused: both
        # are now namesakes, neither is the one model of that name and version.
        other = dataclasses.replace(mine, sha256="ab" * 32, directory=tmp_path / "other")
        _legacy_rows(session, other)
        for spec, named in ((mine, tmp_path / "other"), (other, mine.directory.resolve())):
            clash = identity_clash(session, spec)
            assert clash is not None and f"the registered {named}" in clash
        # ... and the activated one is refused for scoring, rather than used.
        with pytest.raises(ModelNotFoundError, match=(
                r"the model activated in the database is refused: .* Until then, `mammo "
                "models activate` another model")):
            model_for(settings, session)
    engine.dispose()


def test_the_shipped_model_stays_activatable_beside_a_registered_namesake(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    shipped = resolve_model("default")
    as_shipped = resolve_model(str(_copy_as(tiny_model_dir, tmp_path, "default",
                                            shipped.version)))
    settings, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        _legacy_rows(session, as_shipped)
        assert identity_clash(session, shipped) is None
        activate(session, shipped)
        assert model_for(settings, session).sha256 == shipped.sha256
    engine.dispose()


def test_scoring_refuses_a_namesake_before_registering_it(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    # `mammo run`/`worker`/`recover` with MAMMO_MODEL naming a copy of the shipped model's
    # name and version with other weights: refused like its activation, never registered.
    from sqlalchemy import func, select

    from shared.db.schema import ModelVersion

    shipped = resolve_model("default")
    namesake = _copy_as(tiny_model_dir, tmp_path, "default", shipped.version)
    settings, engine, sessions = _sessions(sqlite_url)
    explicit = settings.model_copy(update={"model": str(namesake)})
    with sessions() as session:
        with pytest.raises(ModelNotFoundError) as refused:
            model_for(explicit, session)
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    engine.dispose()
    said = str(refused.value)
    assert said.startswith("MAMMO_MODEL is refused: ")
    assert f"(sha256 {resolve_model(str(namesake)).sha256[:12]})" in said
    assert f"the shipped {shipped.directory} (sha256 {shipped.sha256[:12]})" in said
    assert "--version NEW" in said


@pytest.mark.parametrize("own", ["--version 1.8.0", "--version=1.8.0"])
def test_the_retrain_hint_gives_only_the_new_version(tmp_path: Path, own: str,
                                                    sqlite_url: str) -> None:
    shipped = resolve_model("default")
    recorded = f"mammo train ../shared/data/mini-mias --output 'my models' {own} --stage-convs 2"
    namesake = dataclasses.replace(
        shipped, sha256="cd" * 32, directory=tmp_path / "tm",
        metadata={**shipped.metadata, "training": {"command": recorded}})
    _, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        clash = identity_clash(session, namesake)
    engine.dispose()
    assert clash is not None, "the shipped model holds that name and version"
    assert ("(`mammo train ../shared/data/mini-mias --output 'my models' --stage-convs 2 "
            "--version NEW`)") in clash
