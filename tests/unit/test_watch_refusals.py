"""The watcher and a block the database refuses: one file must not stop the watch.

A NUL in one DICOM header made PostgreSQL refuse the watcher's whole block; the error ended
`mammo watch`, which stopped again at the same file at each restart, its good neighbours
never registered. The watcher's steps run in-process (as in ``test_watch_service``), on
real files, the NUL cases on a real PostgreSQL database.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from producer import registration
from producer.watch import ingest
from producer.watch.service import Watcher, WatchOptions
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import ErrorCode
from shared.imaging import readers
from shared.queue import create_celery_app
from tests.helpers.bad_inputs import good_dicom
from tests.helpers.dicom_edit import rewrite_dicom


def _sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _watcher(settings: Settings, sessions: sessionmaker[Session], root: Path) -> Watcher:
    s = settings.model_copy(update={"watch_quiet_period_s": 0.0,
                                    "patient_id_key": SecretStr("unit-test-key-0123456789abcdef")})
    return Watcher(s, sessions, create_celery_app(s.embedded()), WatchOptions(root))


def _step(watcher: Watcher) -> None:
    watcher.scan()
    watcher.queue_ready(threading.Event())


def _folder(root: Path) -> Path:
    """Three good DICOM files and one whose Manufacturer holds a NUL."""
    root.mkdir(parents=True, exist_ok=True)
    for seed in range(3):
        good_dicom(root / f"good{seed}.dcm", 10 + seed)
    bad = good_dicom(root / "zbad.dcm", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rewrite_dicom(bad, Manufacturer="GE\x00Med")
    return bad


def _states(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str | None]]:
    with sessions() as session:
        return {Path(source).name: (state, code) for source, state, code in session.execute(
            select(Image.source, Image.state, Image.error_code))}


def test_a_header_with_a_nul_does_not_stop_the_watch_on_postgresql(
        settings: Settings, postgres_url: str, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"database_url": postgres_url})
    sessions = _sessions(settings)
    root = tmp_path / "in"
    _folder(root)
    watcher = _watcher(settings, sessions, root)
    _step(watcher)  # raised DataError, which ended the watch loop
    _step(watcher)
    assert _states(sessions) == {name: ("queued", None) for name in
                                 ("good0.dcm", "good1.dcm", "good2.dcm", "zbad.dcm")}
    with sessions() as session:
        assert session.execute(select(Image.manufacturer).where(
            Image.source.like("%zbad.dcm"))).scalar_one() == "GE\\x00Med"


def test_a_value_postgresql_still_refuses_fails_that_file_once_and_the_rest_go_in(
        settings: Settings, postgres_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Should a fault let such a value through again: the block's good files are queued,
    # the refused file is failed with the reason, and no later scan tries it again.
    settings = settings.model_copy(update={"database_url": postgres_url})
    sessions = _sessions(settings)
    root = tmp_path / "in"
    _folder(root)
    for module in (registration, readers):  # a NUL not escaped
        monkeypatch.setattr(module, "bounded", lambda header: header)
    caplog.set_level(logging.INFO)
    watcher = _watcher(settings, sessions, root)
    _step(watcher)
    _step(watcher)
    _step(watcher)
    states = _states(sessions)
    assert states == {"good0.dcm": ("queued", None), "good1.dcm": ("queued", None),
                      "good2.dcm": ("queued", None),
                      "zbad.dcm": ("failed", ErrorCode.INTERNAL.value)}
    refusals = [m for m in caplog.messages if m.startswith("the database refused to register")]
    assert len(refusals) == 2  # the block, then the file: once, not at every scan
    assert any(m.startswith("rejected zbad.dcm (image") and "database refused" in m
               for m in caplog.messages)


def test_a_block_the_database_refuses_is_set_aside_until_its_files_change(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Neither an outage nor one file's value (a schema the database refuses, say): the
    # watch goes on, says what to do, and does not read the same files at every scan.
    sessions = _sessions(settings)
    root = tmp_path / "in"
    bad = _folder(root)
    calls: list[list[str]] = []
    register = ingest.register_files

    def refusing(sessions_: Any, batch_id: int, paths: Any, **kw: Any) -> Any:
        calls.append(sorted(p.name for p in paths))
        if bad in paths:
            raise ProgrammingError("INSERT INTO images ...", {}, Exception("column x is missing"))
        return register(sessions_, batch_id, paths, **kw)

    monkeypatch.setattr(ingest, "register_files", refusing)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root)
    _step(watcher)  # raised ProgrammingError, which ended the watch loop
    _step(watcher)
    assert len(calls) == 1 and _states(sessions) == {}
    [said] = [m for m in caplog.messages if "database refused" in m]
    assert "4 file(s) (good0.dcm, good1.dcm, good2.dcm and 1 more)" in said
    assert "column x is missing" in said and "tried again when they change" in said
    good_dicom(bad, 21)  # the file rewritten: it is looked at again, and the rest with it
    for seed in range(3):
        (root / f"good{seed}.dcm").touch()
    _step(watcher)
    assert calls[1:] == [["good0.dcm", "good1.dcm", "good2.dcm", "zbad.dcm"]]
    assert len(calls) == 2 and _states(sessions) == {}
    monkeypatch.setattr(ingest, "register_files", register)
    good_dicom(bad, 22)
    for seed in range(3):
        good_dicom(root / f"good{seed}.dcm", 30 + seed)
    _step(watcher)
    assert set(_states(sessions).values()) == {("queued", None)} and len(_states(sessions)) == 4
