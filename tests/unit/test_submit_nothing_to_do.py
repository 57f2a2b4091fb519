"""`mammo submit` of folders with no file to read makes no batch, as `mammo run` does.

It made an empty batch (total 0, listed by `mammo status` for ever, stamped finished, its
"batch finished" notification sent) and exited 0, while `mammo run` of the same folder
says "nothing to do" and makes none. Now both say the same and exit 0. A folder whose only
files cannot be read still makes a batch: its rows say why each was refused (exit 3).
Real Redis (nothing must reach it), on SQLite, then PostgreSQL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.queue import create_celery_app, queue_depth
from tests.helpers.cli import run_cli


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _nothing_but_skipped(folder: Path) -> Path:
    """Files a walk passes over: hidden, a sidecar, a named pipe, a dangling link."""
    folder.mkdir()
    (folder / ".hidden.dcm").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    os.mkfifo(folder / "pipe")
    (folder / "gone.dcm").symlink_to(folder / "no-such-file")
    return folder


def _counts(url: str) -> tuple[int, int]:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)  # a submit of nothing need not have touched the database
    try:
        with make_session_factory(engine)() as session:
            return (session.scalar(select(func.count()).select_from(Batch)) or 0,
                    session.scalar(select(func.count()).select_from(Image)) or 0)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("make", "skipped"), [
    (lambda f: f.mkdir() or f, 0),
    (_nothing_but_skipped, 2),
])
def test_submit_of_nothing_to_read_makes_no_batch_and_says_what_run_says(
        make: object, skipped: int, database_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make(tmp_path / "night")  # type: ignore[operator]
    env = {"database_url": database_url, "broker_url": redis_url}

    plain = run_cli(["submit", str(folder)], monkeypatch, tmp_path, **env)
    as_json = run_cli(["submit", str(folder), "--json"], monkeypatch, tmp_path, **env)
    run = run_cli(["run", str(folder)], monkeypatch, tmp_path, database_url=database_url,
                  model="no-such-model")  # it stops before any model is loaded

    assert plain.exit_code == as_json.exit_code == run.exit_code == ExitCode.OK, plain.output
    assert plain.stdout == ""  # no batch id to read
    summary = json.loads(as_json.stdout)
    assert summary["batch_id"] is None and summary["files"] == summary["queued"] == 0
    assert summary["skipped"] == skipped
    assert "nothing to do: no image files under" in plain.stderr
    assert _said(plain) == _said(as_json) == _said(run)  # one message, warnings included
    assert _counts(database_url) == (0, 0)
    app = create_celery_app(Settings(broker_url=redis_url, _env_file=None))  # type: ignore[call-arg]
    try:
        assert queue_depth(app) == 0  # nothing sent either
    finally:
        app.close()


def _said(result: Result) -> str:
    """stderr without the database's migration log line (the first command's only)."""
    return "".join(line for line in result.stderr.splitlines(keepends=True)
                   if "database migrated" not in line)


def test_submit_of_only_unreadable_files_keeps_their_batch(
        database_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Files refused at intake are the batch's record of why: not "nothing to do"."""
    folder = _nothing_but_skipped(tmp_path / "night")
    (folder / "scan.png").write_bytes(b"not a PNG: a transfer that went wrong")
    result = run_cli(["submit", str(folder), "--json"], monkeypatch, tmp_path,
                     database_url=database_url, broker_url=redis_url)
    assert result.exit_code == ExitCode.IMAGES_FAILED, result.output
    summary = json.loads(result.stdout)
    assert summary["batch_id"] == 1 and summary["rejected"] == 1 and summary["skipped"] == 2
    assert _counts(database_url) == (1, 1)
