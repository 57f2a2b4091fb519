"""Failures a person can fix end in one line and a named exit code, never a traceback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

from producer.cli.exit_codes import ExitCode
from producer.cli.main import cli
from shared.config import Settings
from shared.db.engine import create_db_engine, failed_command_as_error, unavailable_as_error
from shared.errors import DatabaseUnavailableError
from shared.synthetic import make_exam_set, synth_mammogram, write_png
from tests.helpers.cli import invoke_cli


def test_missing_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      tiny_model_dir: Path) -> None:
    code, out = invoke_cli(["run", str(tmp_path / "absent")], monkeypatch, tmp_path,
                            model=str(tiny_model_dir))
    assert code == ExitCode.PATH_NOT_FOUND
    assert "Path does not exist" in out and "Traceback" not in out


def test_no_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "scan.png").write_bytes(b"not looked at before the model is found")
    code, out = invoke_cli(["run", str(tmp_path)], monkeypatch, tmp_path, model="no-such-model")
    assert code == ExitCode.NO_MODEL
    assert "MAMMO_MODEL" in out


def test_submit_needs_a_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["submit", str(tmp_path)], monkeypatch, tmp_path)
    assert code == ExitCode.CONFIG
    assert "MAMMO_BROKER_URL" in out and "mammo run" in out


def test_broker_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["submit", str(tmp_path)], monkeypatch, tmp_path,
                            broker_url="redis://127.0.0.1:1/0")
    assert code == ExitCode.BROKER_UNAVAILABLE
    assert "Cannot reach the message broker" in out


def test_database_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["status"], monkeypatch, tmp_path,
                            database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == ExitCode.DATABASE_UNAVAILABLE
    assert "Cannot reach the database" in out


def test_a_sqlite_file_in_a_folder_that_does_not_exist_names_the_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # There is no server to check: what is wrong is the file's folder.
    code, out = invoke_cli(["status"], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 'gone' / 'm.db'}")
    assert code == ExitCode.DATABASE_UNAVAILABLE, out
    assert f"needs a folder this user can write ({tmp_path / 'gone'} does not exist)" in out
    assert "server" not in out


def _sqlite_error(message: str, code: int | None = None) -> OperationalError:
    orig = sqlite3.OperationalError(message)
    if code is not None:
        orig.sqlite_errorcode = code
    return OperationalError("INSERT INTO batches ...", {}, orig)


@pytest.mark.parametrize(("free", "error", "expected"), [
    # SQLite says "disk I/O error" as often as "disk is full" when it runs out of space.
    (64 << 10, _sqlite_error("disk I/O error", 10), "The disk holding {db} is full (64 KiB free)"),
    (8 << 30, _sqlite_error("database or disk is full", 13), "The disk holding {db} is full"),
    (8 << 30, _sqlite_error("disk I/O error", 10), "its disk is not full, 8,192 MiB free"),
])
def test_a_failing_sqlite_file_says_whether_its_disk_is_full(
        free: int, error: OperationalError, expected: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # A full disk was reported as a folder this user cannot write.
    db = tmp_path / "m.db"
    monkeypatch.setattr("shared.db.engine.shutil.disk_usage",
                        lambda _folder: SimpleNamespace(total=16 << 30, used=0, free=free))
    engine = create_db_engine(Settings(database_url=f"sqlite:///{db}", _env_file=None))  # type: ignore[call-arg]
    with pytest.raises(DatabaseUnavailableError) as at_start, unavailable_as_error(engine):
        raise error
    mid_command = failed_command_as_error(f"sqlite:///{db}", error)
    for message in (str(at_start.value), str(mid_command)):
        assert expected.format(db=db) in message, message
        assert ("needs a folder this user can write" in message) == ("not full" in message)


def test_invalid_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, chunk_size="-3")
    assert code == ExitCode.CONFIG
    assert "MAMMO_" in out


def _every_command(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and group under ``group``, as the words that name it."""
    found: list[list[str]] = []
    ctx = click.Context(group)
    # list_commands/get_command, not .commands: `mammo` loads its commands on demand.
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found.append([*prefix, name])
        if isinstance(command, click.Group):
            found += _every_command(command, (*prefix, name))
    return found


@pytest.mark.parametrize("command", _every_command(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "mammo " in result.output


def test_a_read_only_database_is_one_line_and_exit_7(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, tiny_model_dir: Path) -> None:
    db = tmp_path / "results.db"
    code, out = invoke_cli(["status"], monkeypatch, tmp_path, database_url=f"sqlite:///{db}")
    assert code == ExitCode.OK, out  # created and migrated; now opened read-only
    make_exam_set(tmp_path / "exams", n_exams=1, seed=2)
    code, out = invoke_cli(["run", str(tmp_path / "exams")], monkeypatch, tmp_path,
                            database_url=f"sqlite:///file:{db}?mode=ro&uri=true",
                            model=str(tiny_model_dir))
    assert code == ExitCode.DATABASE_UNAVAILABLE
    assert "refused the operation: attempt to write a readonly database" in out
    assert "Traceback" not in out


def test_a_report_folder_that_is_a_file_is_one_line_before_any_work(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # It was found only once every image had been classified (a night's batch, then exit 4).
    blocker = tmp_path / "reports"
    blocker.write_text("not a folder")
    make_exam_set(tmp_path / "exams", n_exams=1, seed=2)
    env = {"database_url": f"sqlite:///{tmp_path / 'results.db'}", "model": str(tiny_model_dir)}
    code, out = invoke_cli(["run", str(tmp_path / "exams"), "--report-dir", str(blocker)],
                            monkeypatch, tmp_path, **env)
    assert code == ExitCode.CONFIG
    assert f"{blocker} is a file, not a folder" in out and "Traceback" not in out
    assert "loading the model" not in out
    code, out = invoke_cli(["results", "--format", "json"], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK and json.loads(out) == []  # nothing registered: run it again
    assert list(blocker.parent.glob(".mammo-write-check*")) == []
    code, out = invoke_cli(["run", str(tmp_path / "exams"), "--report-dir",
                            str(tmp_path / "written")], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK, out
    code, out = invoke_cli(["report", "batch", "1", "--format", "csv", "-o",
                             str(blocker / "batch.csv")], monkeypatch, tmp_path, **env)
    assert code == ExitCode.CONFIG and "is a file, not a folder" in out


def test_a_bad_manifest_exits_2_before_the_model_loads(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    from worker.classifier import Classifier

    def no_load(self: Classifier) -> None:
        raise AssertionError("the model was loaded before the manifest was checked")

    monkeypatch.setattr(Classifier, "load", no_load)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(b"never read: the manifest fails first")
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,pixel_spacing_mm\nfiles/a.png,inf\n")
    code, out = invoke_cli(["run", str(tmp_path / "files"), "--manifest", str(manifest)],
                           monkeypatch, tmp_path, model=str(tiny_model_dir))
    assert code == ExitCode.USAGE, out
    assert "pixel_spacing_mm" in out and "Traceback" not in out


@pytest.mark.parametrize("args", [["results", "--batch", "99"], ["status", "99"],
                                  ["recover", "--batch", "99", "--dry-run"],
                                  ["report", "batch", "99"],
                                  ["worklist", "--batch", "99", "--format", "json"],
                                  ["stats", "--batch", "99", "--format", "json"],
                                  ["report", "worklist", "99", "--format", "json"],
                                  ["report", "stats", "99", "--format", "csv"]])
def test_a_batch_that_does_not_exist_is_named_by_every_command(
        args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty answer would read as "nothing there yet"; every command says it the same way.
    code, out = invoke_cli(args, monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 'm.db'}")
    assert code == 2, out
    assert "no batch with id 99; `mammo status` lists the recent batches" in out


@pytest.mark.parametrize("args", [["results", "--batch", "{n}"], ["status", "{n}"],
                                  ["recover", "--batch", "{n}", "--dry-run"],
                                  ["report", "batch", "{n}"],
                                  ["worklist", "--batch", "{n}", "--format", "json"]])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_batch_number_past_the_id_column_is_no_batch_not_a_traceback(
        args: list[str], backend: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A pasted number: the driver refused to bind it (SQLite's 64-bit, PostgreSQL's 32-bit
    # INTEGER) and the command died with an OverflowError or NumericValueOutOfRange.
    url = (f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    number = "99999999999999999999999" if backend == "sqlite" else "3000000000"
    code, out = invoke_cli([a.format(n=number) for a in args], monkeypatch, tmp_path,
                           database_url=url)
    assert code == 2, out
    assert f"no batch with id {number};" in out and "Traceback" not in out


def test_demo_runs_the_pipeline_and_labels_everything_synthetic(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The README's first command on a fresh machine: its reports must never read as a
    # real patient's.
    code, out = invoke_cli(["demo", "--exams", "1", "--format", "json"], monkeypatch, tmp_path,
                           model=str(tiny_model_dir), report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out  # its truncated transfer fails on purpose, as a showcase
    summary = (tmp_path / "reports" / "batch-1-summary.html").read_text(encoding="utf-8")
    assert "SYNTHETIC - NOT A REAL PATIENT" in summary
    batch = json.loads((tmp_path / "reports" / "batch-1.json").read_text())
    assert sorted(r["state"] for r in batch["results"]) == ["done"] * 4 + ["failed"]
    assert len(list((tmp_path / "reports" / "exams").glob("*.pdf"))) == 1


def test_demo_classifies_only_the_files_it_wrote(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # A real image in the demo folder must never be scored under a batch labelled synthetic.
    folder = tmp_path / "demo-data"
    folder.mkdir()
    write_png(folder / "real-patient.png", synth_mammogram(np.random.default_rng(1)))
    code, out = invoke_cli(["demo", "--exams", "1", "--dir", str(folder), "--format", "json"],
                           monkeypatch, tmp_path, model=str(tiny_model_dir),
                           report_dir=str(tmp_path / "reports"))
    assert code == ExitCode.OK, out
    batch = json.loads((tmp_path / "reports" / "batch-1.json").read_text())
    assert len(batch["results"]) == 5
    assert not any("real-patient" in r["source"] for r in batch["results"])


def test_demo_into_a_folder_it_cannot_write_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "a-file" / "demo"  # as unwritable as a full disk, even for root
    code, out = invoke_cli(["demo", "--exams", "1", "--dir", str(folder)],
                           monkeypatch, tmp_path, model=str(tiny_model_dir))
    assert code == ExitCode.CONFIG, out
    assert "Cannot write the synthetic demo files to" in out and "Traceback" not in out


def test_a_run_with_no_image_files_says_so_and_loads_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "night"
    empty.mkdir()
    (empty / ".hidden.dcm").write_bytes(b"x")
    (empty / "notes.txt").write_text("not an image")
    env = {"database_url": f"sqlite:///{tmp_path / 'm.db'}", "model": "no-such-model"}
    code, out = invoke_cli(["run", str(empty)], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK and "nothing to do: no image files under" in out
    code, out = invoke_cli(["status", "--format", "json"], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK and json.loads(out) == []  # no empty batch was created
