"""What the watcher passes over in its folder, and how it names what it cannot use: its own
output folders whatever the action, a known file it cannot read, a link round to the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from producer.discovery import link_problem
from producer.watch.folder import WatchFolder
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, DuplicateSubmission, Image
from shared.enums import ErrorCode
from tests.unit.test_watch_service import _dicom, _step, _stopped, _watcher


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _filed(settings: Settings, sessions: sessionmaker[Session], root: Path) -> None:
    """ok.dcm done in processed/, bad.dcm failed in failed/ with its reason, by `--after
    move`."""
    _dicom(root / "sub/ok.dcm", 1)
    _dicom(root / "bad.dcm", 2)
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    with sessions() as session:
        ids = dict(session.execute(select(Image.source, Image.id)).all())
        lifecycle.mark_done(session, [ids[str(root / "sub/ok.dcm")]])
        lifecycle.mark_failed(session, ids[str(root / "bad.dcm")], ErrorCode.NOT_MAMMOGRAPHY,
                              "bad.dcm is a chest CT.")
        session.commit()
    watcher.followup.poll()
    assert (root / "processed/sub/ok.dcm").is_file() and (root / "failed/bad.dcm").is_file()


@pytest.mark.parametrize("after", ["leave", "delete"])
def test_processed_and_failed_stay_the_watchers_own_when_the_action_changes(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, after: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # Switched from `--after move` to leave, the watcher read failed/ and processed/ as new
    # drops: failed/bad.dcm queued again from there ("it had failed"), its source becoming
    # failed/bad.dcm, and processed/ files logged as duplicates at every start.
    root = tmp_path / "in"
    _filed(settings, sessions, root)
    filed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    caplog.set_level(logging.INFO, logger="mammo.watch")
    for _ in range(2):  # a restart, then another
        watcher = _watcher(settings, sessions, root, watch_after=after)
        watcher.run(_stopped())
        _step(watcher)
        for path in (root / "failed/bad.dcm", root / "processed/sub/ok.dcm"):
            watcher.consider(path, finished=True)  # as inotify reports a touch there
        watcher.queue_ready(threading.Event())
        watcher.followup.poll()
    with sessions() as session:
        rows = session.execute(select(Image.source, Image.state).order_by(Image.id)).all()
        copies = session.scalar(select(func.count()).select_from(DuplicateSubmission))
        submitted = session.scalar(select(func.sum(Batch.submitted)))
    assert sorted(tuple(r) for r in rows) == [(str(root / "bad.dcm"), "failed"),
                                             (str(root / "sub/ok.dcm"), "done")]
    assert (copies, submitted) == (0, 2)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == filed
    assert not any(m.startswith(("queued", "skipped duplicate", "rejected", "deleted"))
                   for m in caplog.messages)
    assert caplog.messages.count(
        "passing over processed/ and failed/ inside the watched folder: the watcher's own "
        "(--after move files images there), never read as dropped files") == 2


def test_the_output_folders_are_passed_over_whatever_the_action(tmp_path: Path) -> None:
    folder = WatchFolder.of(tmp_path, ())
    assert folder.ignored(tmp_path / "failed/x.dcm")
    assert folder.ignored(tmp_path / "processed/sub/y.dcm")
    assert not folder.ignored(tmp_path / "sub/failed/z.dcm")  # only at the top


def _scan_unprivileged(database_url: str, root: str, after: str) -> None:
    """Run in a child that cannot bypass file permissions: one scan and one follow-up,
    the log's messages printed as JSON."""
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    log = logging.getLogger("mammo.watch")
    log.addHandler(_Keep())
    log.setLevel(logging.INFO)
    settings = Settings(database_url=database_url, broker_url=None,  # type: ignore[call-arg]
                        report_dir=Path(root).parent / "reports", _env_file=None)
    engine = create_db_engine(settings)
    watcher = _watcher(settings, make_session_factory(engine), Path(root), watch_after=after)
    _step(watcher)
    watcher.followup.poll()
    _step(watcher)  # a rescan says nothing new
    print(json.dumps({"messages": messages, "tracked": len(watcher.tracker)}))


@pytest.mark.parametrize(("after", "finished"), [("leave", False), ("move", True)])
def test_a_known_file_that_cannot_be_read_is_not_taken_for_another_file(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, after: str,
        finished: bool) -> None:
    # `chmod 000` on a queued file: the log said it "now holds another file than image 1"
    # and looked at it as a new file.
    root = tmp_path / "in"
    locked = _dicom(root / "locked.dcm", 1)
    _step(_watcher(settings, sessions, root, watch_after=after))
    if finished:
        with sessions() as session:
            lifecycle.mark_done(session, [1])
            session.commit()
    locked.chmod(0)
    try:
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the power to read")
        # Root reads any file: the scan runs in a child stripped of the two capabilities
        # that bypass file permissions.
        prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
                  if os.geteuid() == 0 else [])
        code = ("import sys; from tests.unit.test_watch_folder_rules import _scan_unprivileged;"
                " _scan_unprivileged(*sys.argv[1:])")
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(settings.database_url), str(root), after],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
            timeout=120, check=False)
    finally:
        locked.chmod(0o644)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tracked"] == 0  # not looked at as a new file
    said = [m for m in out["messages"] if "locked.dcm" in m]
    if finished:  # its image is done: the move leaves it where it is
        assert said == ["left locked.dcm in place: it cannot be read (Permission denied), so "
                        "whether it is still the file of image 1 cannot be told; tried again "
                        "at the next scan"]
        assert locked.is_file() and not (root / "processed").exists()
    else:
        assert said == ["cannot read locked.dcm (Permission denied): whether it still holds "
                        "image 1 cannot be told until it can be read; it is looked at again at "
                        "each scan"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1


def test_a_link_round_to_the_folder_is_named_a_loop_not_an_escape(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "sub/up").symlink_to(root)
    (root / "sub/top").symlink_to(tmp_path)
    (tmp_path / "secret").mkdir()
    (root / "sub/out").symlink_to(tmp_path / "secret")
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root)
    for name in ("up", "top", "out"):  # inotify's create event for each link
        watcher.consider(root / "sub" / name, finished=True)
    assert sorted(m for m in caplog.messages if m.startswith("ignored")) == [
        "ignored sub/out: symbolic link to a target outside the watched folder (never "
        "followed)",
        "ignored sub/top: symbolic link to a folder above the watched folder, a loop (never "
        "followed)",
        "ignored sub/up: symbolic link to the watched folder itself, a loop (never followed)"]
    assert link_problem(root / "sub/up", root) == (
        "symbolic link to the folder given itself, a loop (never followed)")
