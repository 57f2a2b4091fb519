"""Configuration mistakes that used to be ignored are one line and exit 4 (invalid
configuration): a misspelt MAMMO_* name would leave its setting at the default, e.g. a
worker on a fresh ./mammo.db consuming the real batch's messages as no-ops."""

from __future__ import annotations

import logging
from pathlib import Path
from unittest.mock import Mock

import pytest
from celery import Celery

from models.registry import ModelSpec
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.queue import TASK_PROCESS_CHUNK
from tests.helpers.cli import invoke_cli
from worker.runtime import WorkerRuntime
from worker.tasks import register_tasks

SECRET = "S3cretPW"


@pytest.mark.parametrize(("name", "meant"), [
    ("databse_url", "MAMMO_DATABASE_URL"),
    ("chunksize", "MAMMO_CHUNK_SIZE"),
])
def test_a_misspelt_variable_is_named_with_the_setting_it_meant(
        name: str, meant: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, **{name: "5"})
    assert code == ExitCode.CONFIG, out
    assert f"MAMMO_{name.upper()} is not a setting (did you mean {meant}?)" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "mammo.db").exists()  # nothing ran on the defaults


def test_an_unknown_name_far_from_any_setting_is_named_without_a_guess(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, xyzzy="1")
    assert code == ExitCode.CONFIG and "MAMMO_XYZZY is not a setting." in out


def test_a_misspelt_key_in_the_env_file_is_named_with_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=x\nexport MAMMO_CHUNKSIZE=5\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG, out
    assert "MAMMO_CHUNKSIZE in .env is not a setting (did you mean MAMMO_CHUNK_SIZE?)" in out


def test_settings_and_the_test_suites_own_variable_are_accepted(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Non-MAMMO_ names (compose's POSTGRES_PASSWORD) are not ours to judge.
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=x\nMAMMO_CHUNK_SIZE=8\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, reliability_record="x.json",
                           database_url=f"sqlite:///{tmp_path / 'm.db'}")
    assert code == ExitCode.OK, out


@pytest.mark.parametrize(("content", "expected"), [
    (b'MAMMO_CHUNK_SIZE=8\nMAMMO_DATABASE_URL="sqlite:////elsewhere.db\n',
     "Settings file .env, line 2: not a NAME=value line"),
    (b"MAMMO_CHUNK_SIZE=8\xff\n", "Settings file .env is not UTF-8 text"),
])
def test_an_env_file_that_cannot_be_parsed_is_named_with_its_line(
        content: bytes, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(content)
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG, out
    assert expected in out and "elsewhere" not in out  # the line may hold a password
    assert not (tmp_path / "mammo.db").exists()


def test_an_env_file_saved_with_a_byte_order_mark_is_read_whole(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Windows Notepad's UTF-8: the mark glued itself to the first name, whose setting was
    # dropped, and the command ran on a fresh ./mammo.db.
    wanted = tmp_path / "wanted.db"
    (tmp_path / ".env").write_bytes(
        b"\xef\xbb\xbfMAMMO_DATABASE_URL=sqlite:///" + str(wanted).encode() + b"\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.OK, out
    assert wanted.exists() and not (tmp_path / "mammo.db").exists()
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfMAMMO_DATABSE_URL=sqlite:///x.db\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG and "MAMMO_DATABSE_URL" in out, out


def test_an_env_path_that_is_not_a_file_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG, out
    assert "Settings file .env cannot be read" in out
    assert not (tmp_path / "mammo.db").exists()


@pytest.mark.parametrize("name", ["MAMO_DATABASE_URL", "MAMMMO_DATABASE_URL",
                                  "MAMMO-DATABASE_URL", "mammodatabase_url"])
def test_a_misspelt_prefix_in_the_env_file_is_refused_with_the_setting_it_meant(
        name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only names starting exactly with MAMMO_ were checked: this one was ignored, and the
    # command ran on a fresh ./mammo.db.
    (tmp_path / ".env").write_text(f"{name}=sqlite:///{tmp_path / 'x.db'}\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG, out
    assert f"{name} in .env is not a setting (did you mean MAMMO_DATABASE_URL?)" in out
    assert not (tmp_path / "mammo.db").exists()


def test_other_programs_names_in_the_env_file_are_not_taken_for_misspelt_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A compose .env holds other services' settings, some ending like ours.
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://x\nGAMMA_LOG_LEVEL=1\n"
                                   "MAMA_MODEL=x\nREDIS_BROKER_URL=redis://r\n")
    code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    assert code == ExitCode.OK, out


def test_a_misspelt_prefix_in_the_environment_is_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The environment is every program's: a look-alike there is named, not refused.
    monkeypatch.setenv("MAMO_CHUNK_SIZE", "4")
    monkeypatch.setenv("GAMMA_LOG_LEVEL", "1")
    with caplog.at_level(logging.WARNING, logger="shared.config"):
        code, out = invoke_cli(["status"], monkeypatch, tmp_path,
                               database_url=f"sqlite:///{tmp_path / 'm.db'}")
    assert code == ExitCode.OK, out
    [warning] = [r.getMessage() for r in caplog.records if r.name == "shared.config"]
    assert "MAMO_CHUNK_SIZE is not a setting (did you mean MAMMO_CHUNK_SIZE?)" in warning
    assert "ignored" in warning


@pytest.mark.parametrize(("where", "expected"), [
    ("env", "MAMMO_CHUNK_SIZE in the environment: Input should be a valid integer"),
    (".env", "MAMMO_CHUNK_SIZE in .env: Input should be a valid integer"),
])
def test_an_invalid_value_names_its_variable_and_where_it_was_set(
        where: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # It named pydantic's field ("chunk_size: ..."), which is set nowhere under that name.
    if where == ".env":
        (tmp_path / ".env").write_text("MAMMO_CHUNK_SIZE=lots\n")
        code, out = invoke_cli(["status"], monkeypatch, tmp_path)
    else:
        code, out = invoke_cli(["status"], monkeypatch, tmp_path, chunk_size="lots")
    assert code == ExitCode.CONFIG, out
    assert expected in out and "chunk_size" not in out


def test_a_short_patient_id_key_is_refused_when_the_settings_load(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # It was refused only at the first DICOM with a PatientID, after the model had loaded:
    # `mammo watch` passed its health check and stopped on the first patient's file.
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, patient_id_key="s3cr3t")
    assert code == ExitCode.CONFIG, out
    assert "MAMMO_PATIENT_ID_KEY in the environment is too short" in out and "s3cr3t" not in out
    assert not (tmp_path / "mammo.db").exists()
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, patient_id_key="k" * 16,
                           database_url=f"sqlite:///{tmp_path / 'm.db'}")
    assert code == ExitCode.OK, out


def _spec(directory: Path) -> ModelSpec:
    return ModelSpec("default", "1.2.0", directory, "0" * 64, ("normal", "benign", "malignant"),
                     (64, 64), "2", {})


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://mammo:{SECRET}@db-host/mammo",
     "database postgresql+psycopg://mammo:***@db-host/mammo (MAMMO_DATABASE_URL)"),
    ("sqlite:///mammo.db", "database sqlite:///mammo.db = {cwd}/mammo.db (MAMMO_DATABASE_URL)"),
])
def test_a_starting_worker_logs_its_database_masked_and_its_model(
        url: str, shown: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A worker on the wrong database finishes nothing: its first lines must say which one.
    monkeypatch.chdir(tmp_path)
    for signal in ("worker_process_init", "worker_process_shutdown"):
        monkeypatch.setattr(f"worker.tasks.{signal}", Mock())  # no prefork child here
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    runtime = WorkerRuntime(settings, model_spec=_spec(tmp_path / "model"))
    with caplog.at_level(logging.INFO, logger="worker.tasks"):
        register_tasks(Celery("t", broker="memory://localhost/"), runtime, warm_up=True)
    [line] = [r.getMessage() for r in caplog.records if "database" in r.getMessage()]
    assert shown.format(cwd=tmp_path.resolve()) in line and SECRET not in line
    assert f"model default 1.2.0 ({tmp_path / 'model'})" in line


def _done_image(settings: Settings) -> int:
    """One image already processed, in a migrated database of its own."""
    engine = create_db_engine(settings)
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        batch = Batch(name="t")
        session.add(batch)
        session.flush()
        image = Image(identity="sha256:1", batch_id=batch.id, source="/x/1.png", format="png",
                      state="done", attempts=1)
        session.add(image)
        session.commit()
        return image.id


@pytest.mark.parametrize(("unknown", "warned"), [
    ([7777, 7778], "2 of its 3 image id(s)"),
    ([], None),  # a duplicate message for finished work: nothing to say
])
def test_a_chunk_of_ids_this_database_lacks_is_a_warned_no_op(
        unknown: list[int], warned: str | None, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, tiny_model_spec: ModelSpec) -> None:
    # The producer queued them in another database: claiming nothing looked like a duplicate.
    # A real model: the worker loads it before it claims anything.
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}",  # type: ignore[call-arg]
                        _env_file=None)
    done = _done_image(settings)
    app = Celery("t", broker="memory://localhost/")
    register_tasks(app, WorkerRuntime(settings, model_spec=tiny_model_spec))
    with caplog.at_level(logging.WARNING, logger="worker.tasks"):
        # Not .get(): a task an earlier test left on Celery's stack makes get() refuse to
        # block ("Never call result.get() within a task!") in the whole suite.
        applied = app.tasks[TASK_PROCESS_CHUNK].apply(args=([done, *unknown],))
    assert applied.successful(), applied.traceback
    result = applied.result
    assert result["claimed"] == 0 and result["done"] == 0  # still a no-op: idempotent
    lines = [r.getMessage() for r in caplog.records
             if "not in this worker's database" in r.getMessage()]
    if warned is None:
        assert lines == []
        return
    [line] = lines
    assert warned in line and "MAMMO_DATABASE_URL" in line and str(tmp_path / "other.db") in line


def test_a_worker_whose_model_is_not_the_activated_one_says_so(settings: Settings) -> None:
    """Two workers on one queue, one with an explicit MAMMO_MODEL: exams then mix models."""
    from models.activation import activate
    from models.registry import resolve_model

    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    runtime = WorkerRuntime(settings)  # MAMMO_MODEL: the tiny test model
    assert runtime.model_mismatch() is None  # nothing activated
    with sessions() as session:
        activate(session, resolve_model("default"))
        session.commit()
    shipped = resolve_model("default")
    assert runtime.model_mismatch() == (
        f"MAMMO_MODEL makes this worker run {runtime.model_spec.name} "
        f"{runtime.model_spec.version}, while the activated model is {shipped.name} "
        f"{shipped.version}: exams whose views reach workers of both get scores of two models "
        "(and are flagged so)")
    with sessions() as session:
        activate(session, runtime.model_spec)
        session.commit()
    assert runtime.model_mismatch() is None
    engine.dispose()
