"""A model version is its name, version, weights and metadata seal, registered once; one
activation at a time; `mammo rescore` re-scores what this version's prediction is not the
current one of. On SQLite and PostgreSQL, through `mammo` where a command is the way in."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models.activation import activate, active_version, model_for, register
from models.bilateral import bilateral_head
from models.registry import ModelSpec, metadata_seal, resolve_model, sealed
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import ExamResult, Image, ModelVersion, Prediction
from shared.errors import ModelNotFoundError
from shared.exams import refresh_exam_results
from shared.queries import ResultFilter, list_results
from shared.rescoring import (
    RescoreFilter,
    not_current_among,
    not_scored_by,
    store_predictions,
)
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.old_schema import migrated_to
from tests.helpers.tiny_model import build_tiny_model

KEY = "identity-test-key-0123456789abcdef"
# The heads of the release before model_versions.metadata_seal (0012).
BEFORE_SEALS = ("0006", "0007", "0009", "0010", "0011")
OTHER_HEAD = {"abnormal": {"own": 0.1, "partner": 3.0, "bias": 1.0},
              "malignant": {"own": 2.0, "partner": 1.5, "bias": 0.5}}


def _variant(src: Path, target: Path, *, head: dict[str, Any] | None = None,
             **changes: Any) -> Path:
    """A sealed copy of the model at ``src``: the same model.keras, with ``changes`` to its
    metadata and ``head`` as its bilateral head."""
    shutil.copytree(src, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta.update(changes)
    if head is not None:
        meta["bilateral"] = {**meta["bilateral"], "head": head}
    (target / "metadata.json").write_text(json.dumps(sealed(meta)))
    return target


def _url(backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> str:
    return sqlite_url if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[tuple[str, Engine,
                                                                           sessionmaker[Session]]]:
    """(url, engine, sessions) on a migrated database of the test's ``backend``."""
    url = _url(request.param, request, sqlite_url)
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    yield url, engine, make_session_factory(engine)
    engine.dispose()


BACKENDS = pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)


def _rows(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as session:
        return [dict(r._mapping) for r in session.execute(
            select(ModelVersion.version, ModelVersion.path, ModelVersion.bilateral,
                   ModelVersion.metadata_seal, ModelVersion.active).order_by(ModelVersion.id))]


# --- one name, version and weights is one sealed model ----------------------------------


@BACKENDS
def test_activate_refuses_another_head_under_a_registered_name_version_and_weights(
        db: tuple[str, Engine, sessionmaker[Session]], tmp_path: Path, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `mammo models bilateral` run twice with one --version into two --output folders.
    url, _, sessions = db
    first = _variant(tiny_model_dir, tmp_path / "first", version="0.5.0")
    other = _variant(tiny_model_dir, tmp_path / "other", version="0.5.0", head=OTHER_HEAD)
    code, out = invoke_cli(["models", "activate", str(first)], monkeypatch, tmp_path,
                           database_url=url)
    assert code == ExitCode.OK, out
    code, out = invoke_cli(["models", "activate", str(other)], monkeypatch, tmp_path,
                           database_url=url)
    assert code == ExitCode.USAGE, out
    assert f"the registered {first.resolve()}" in out and "other sealed settings" in out
    assert "--version NEW" in out
    spec = resolve_model(str(first))
    head = bilateral_head(spec.metadata)
    assert head is not None
    # The one row still describes the model its results were computed with.
    assert _rows(sessions) == [{"version": "0.5.0", "path": str(first.resolve()),
                                "bilateral": json.loads(json.dumps(head.to_config())),
                                "metadata_seal": metadata_seal(spec.metadata),
                                "active": True}]


def test_scoring_with_another_head_under_a_registered_identity_is_refused(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _variant(tiny_model_dir, tmp_path / "first", version="0.5.0")
    other = _variant(tiny_model_dir, tmp_path / "other", version="0.5.0", head=OTHER_HEAD)
    make_exam_set(tmp_path / "in", n_exams=1, seed=21)
    code, out = invoke_cli(["models", "activate", str(first)], monkeypatch, tmp_path,
                           database_url=sqlite_url)
    assert code == ExitCode.OK, out
    code, out = invoke_cli(["run", str(tmp_path / "in")], monkeypatch, tmp_path,
                           database_url=sqlite_url, model=str(other), patient_id_key=KEY)
    assert code == ExitCode.NO_MODEL, out
    assert "MAMMO_MODEL is refused" in out and "other sealed settings" in out
    _, engine, sessions = _sessions(sqlite_url)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0
    engine.dispose()


def test_a_racing_registration_under_another_seal_is_refused(
        tmp_path: Path, tiny_model_dir: Path, postgres_url: str) -> None:
    """A worker registering its model while an activation of the same name, version and
    weights with another head commits: the identity check before its insert saw no row."""
    mine = resolve_model(str(_variant(tiny_model_dir, tmp_path / "mine", version="0.6.0")))
    other = resolve_model(str(_variant(tiny_model_dir, tmp_path / "other", version="0.6.0",
                                       head=OTHER_HEAD)))
    _, engine, sessions = _sessions(postgres_url)
    outcome: list[object] = []

    def worker_registers() -> None:
        with sessions() as session:
            try:
                outcome.append(register(session, other))
                session.commit()
            except ModelNotFoundError as exc:
                outcome.append(exc)

    with sessions() as session:
        activate(session, mine)  # inserted, not committed
        racer = threading.Thread(target=worker_registers)
        racer.start()
        _wait_until_blocked(engine, racer)
        session.commit()
    racer.join(30)
    engine.dispose()
    assert len(outcome) == 1 and isinstance(outcome[0], ModelNotFoundError), outcome
    assert "this model is refused" in str(outcome[0])
    assert "other sealed settings" in str(outcome[0])


def test_a_row_registered_before_seals_takes_the_seal_of_its_next_activation(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    spec = resolve_model(str(_variant(tiny_model_dir, tmp_path / "mine", version="0.7.0")))
    other = resolve_model(str(_variant(tiny_model_dir, tmp_path / "other", version="0.7.0",
                                       head=OTHER_HEAD)))
    older = resolve_model(str(_variant(tiny_model_dir, tmp_path / "older", version="0.6.9")))
    values = ", ".join(
        f"('{s.name}', '{s.version}', '{s.sha256}', '{s.preprocessing_version}', "
        f"'{json.dumps(list(s.classes))}', '{json.dumps(list(s.input_size))}', "
        f"'{s.directory}', 1, NULL)" for s in (spec, older))
    # What the release before left: rows without a seal; two of them active, as racing
    # activations could leave them on PostgreSQL (here written as they were).
    migrated_to(sqlite_url, BEFORE_SEALS,
                "INSERT INTO model_versions (name, version, sha256, preprocessing_version, "
                f"classes, input_size, path, active, bilateral) VALUES {values}")
    settings, engine, sessions = _sessions(sqlite_url)  # migrates
    rows = _rows(sessions)
    assert [(r["version"], r["active"], r["metadata_seal"]) for r in rows] == [
        ("0.7.0", False, None), ("0.6.9", True, None)]  # the later registered one stays
    with sessions() as session:
        activate(session, spec)
        session.commit()
    row = _rows(sessions)[0]
    assert row["metadata_seal"] == metadata_seal(spec.metadata) and row["active"]
    assert row["bilateral"] is not None  # the head it seals, recorded with it
    with sessions() as session, pytest.raises(ModelNotFoundError, match="other sealed"):
        model_for(settings.model_copy(update={"model": str(other.directory)}), session)
    engine.dispose()


# --- names that NAME:VERSION can name ----------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("name", "a:b"), ("version", "1/2"),
                                              ("version", "1.0 beta")])
def test_activate_refuses_a_name_or_version_train_refuses(
        field: str, value: str, tmp_path: Path, tiny_model_dir: Path, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    odd = _variant(tiny_model_dir, tmp_path / "odd", **{field: value})
    code, out = invoke_cli(["models", "activate", str(odd)], monkeypatch, tmp_path,
                           database_url=sqlite_url)
    assert code == ExitCode.USAGE, out
    assert f"the {field} {value!r} must be one folder name" in out
    assert f"Write it again under another {field}" in out
    _, engine, sessions = _sessions(sqlite_url)
    assert _rows(sessions) == []
    engine.dispose()


# --- one activation at a time ------------------------------------------------------------


def _sessions(url: str) -> tuple[Settings, Engine, sessionmaker[Session]]:
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return settings, engine, make_session_factory(engine)


@contextmanager
def _writes_of_other_threads(engine: Engine) -> Iterator[threading.Event]:
    """An event set once a thread other than this one sends a write on ``engine``."""
    holder = threading.get_ident()
    wrote = threading.Event()

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Not a connection's PRAGMAs or reads: the statement that takes the write lock.
        if threading.get_ident() != holder and statement.lstrip().upper().startswith(
                ("INSERT", "UPDATE", "DELETE", "BEGIN")):
            wrote.set()

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield wrote
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def _wait_until_blocked(engine: Engine, racer: threading.Thread,
                        wrote: threading.Event | None = None) -> None:
    """Until ``racer`` waits for a lock: on PostgreSQL as the server says; SQLite cannot
    tell, so until the racer sends its first write (``wrote``), which waits for the
    holder's lock, and a moment for it to enter that wait. (A fixed 1.5 s was sometimes
    spent before the racer, on a loaded machine, had reached its write at all.)"""
    if engine.dialect.name != "postgresql":
        assert wrote is not None, "SQLite: pass the racer's writes (_writes_of_other_threads)"
        assert wrote.wait(60), "the second activation never wrote"
        time.sleep(0.5)
        assert racer.is_alive()
        return
    for _ in range(120):
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "wait_event_type = 'Lock' AND datname = current_database()")
                            ).scalar():
                return
        time.sleep(0.25)
    pytest.fail("the second activation never waited for the first")


@BACKENDS
def test_two_activations_at_once_leave_the_later_one_active_alone(
        db: tuple[str, Engine, sessionmaker[Session]], tmp_path: Path,
        tiny_model_dir: Path) -> None:
    _, engine, sessions = db
    first, a, b = (resolve_model(str(_variant(tiny_model_dir, tmp_path / v, version=v)))
                   for v in ("1.0.0", "1.1.0", "1.2.0"))
    with sessions() as session:
        activate(session, first)
        session.commit()
    errors: list[Exception] = []

    def activate_b() -> None:
        try:
            with sessions() as session:
                activate(session, b)
                session.commit()
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    with sessions() as session, _writes_of_other_threads(engine) as wrote:
        activate(session, a)  # its row inserted and marked active, not committed yet
        racer = threading.Thread(target=activate_b)
        racer.start()
        _wait_until_blocked(engine, racer, wrote)
        session.commit()
    racer.join(60)
    assert not errors and not racer.is_alive()
    assert [(r["version"], r["active"]) for r in _rows(sessions)] == [
        ("1.0.0", False), ("1.1.0", False), ("1.2.0", True)]
    with sessions() as session:
        assert active_version(session).version == "1.2.0"  # type: ignore[union-attr]


@BACKENDS
def test_active_version_reads_the_later_of_two_active_rows(
        db: tuple[str, Engine, sessionmaker[Session]], tmp_path: Path,
        tiny_model_dir: Path) -> None:
    # Left by activations that raced before they were serialised.
    _, _, sessions = db
    specs = [resolve_model(str(_variant(tiny_model_dir, tmp_path / v, version=v)))
             for v in ("2.0.0", "2.1.0", "2.2.0")]
    with sessions() as session:
        for spec in specs:
            register(session, spec)
        session.execute(text("UPDATE model_versions SET active = (version <> '2.1.0')"))
        session.commit()
        assert active_version(session).version == "2.2.0"  # type: ignore[union-attr]


# --- what `mammo rescore` re-scores, and the newest scoring is the current one ----------


def _predicted(sessions: sessionmaker[Session]) -> dict[int, str]:
    """{image id: model version of its current prediction}, as `mammo results` shows it."""
    with sessions() as session:
        return {r["image_id"]: r["model_version"]
                for r in list_results(session, ResultFilter(batch_id=1))}


@BACKENDS
def test_rescore_rule_follows_the_current_prediction_and_the_model_version(
        db: tuple[str, Engine, sessionmaker[Session]], tmp_path: Path, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _, sessions = db
    first = resolve_model(str(tiny_model_dir))
    second = resolve_model(str(build_tiny_model(tmp_path / "second", seed=8,
                                                version="0.0.2")))
    # The second model's model.keras with another bilateral head, as its own version.
    same_weights = resolve_model(str(_variant(second.directory, tmp_path / "same",
                                              version="0.0.3", head=OTHER_HEAD)))
    make_exam_set(tmp_path / "in", n_exams=1, seed=22)

    def mammo(*args: str, model: ModelSpec) -> str:
        code, out = invoke_cli(list(args), monkeypatch, tmp_path, database_url=url,
                               model=str(model.directory), patient_id_key=KEY)
        assert code == ExitCode.OK, out
        return out

    mammo("run", str(tmp_path / "in"), model=first)
    mammo("rescore", "--batch", "1", model=second)
    assert set(_predicted(sessions).values()) == {"tiny-test-model:0.0.2"}
    everything = RescoreFilter(batch_id=1)
    with sessions() as session:
        ids = sorted(_predicted(sessions))
        # Rolled back: 0.0.1 scored them first, but its predictions are not the current ones.
        assert not_scored_by(session, first, everything) == ids
        assert not_scored_by(session, second, everything) == []
        # The weights of both, under a version of their own: a model version of its own.
        assert not_scored_by(session, same_weights, everything) == ids
        assert not_current_among(session, first, [*ids, *ids]) == ids
        assert not_current_among(session, second, ids) == []
        old = session.execute(select(Prediction).where(
            Prediction.image_id == ids[0], Prediction.model_version_id == register(
                session, first))).scalar_one()
        row = {c.name: getattr(old, c.name) for c in Prediction.__table__.columns
               if c.name != "id"}
        exam_before = session.execute(select(ExamResult.version).where(
            ExamResult.superseded_at.is_(None))).scalar_one()
        # 0.0.1 scores the first image again (a rollback's re-score): its prediction is
        # current now, everywhere the current prediction is read.
        store_predictions(session, [{**row, "p_malignant": 0.999, "label": "malignant",
                                     "suspicion": 10}])
        changed = refresh_exam_results(session, [1], timeout_s=3600)
        session.commit()
        assert [c.version for c in changed] == [exam_before + 1]
        exam = session.execute(select(ExamResult.p_malignant).where(
            ExamResult.superseded_at.is_(None))).scalar_one()
        assert exam == pytest.approx(0.999)
        assert not_scored_by(session, first, everything) == ids[1:]
        assert not_current_among(session, first, ids) == ids[1:]
        assert session.scalar(select(func.count()).select_from(Prediction)) == 8
    assert _predicted(sessions)[ids[0]] == "tiny-test-model:0.0.1"
