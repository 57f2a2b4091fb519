"""The watcher's steps in-process, on real files and a real SQLite database.

The Celery app is the in-memory transport with no worker attached: these tests are about
what is registered, sent, skipped and moved, not about classification (the integration
tests run real `mammo watch` processes end to end).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.watch.folder import WatchFolder
from producer.watch.scanner import walk
from producer.watch.service import Watcher, WatchOptions
from producer.watch.stability import StabilityTracker
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Batch, Image
from shared.enums import ErrorCode, Laterality, View
from shared.queue import create_celery_app
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.processes import wait_for


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _dicom(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(n), size=(96, 80))
    return write_dicom(path, pixels, study_uid="1.2.9", sop_uid=f"1.2.9.{n}",
                       laterality=Laterality.LEFT, view=View.CC)


def _watcher(settings: Settings, sessions: sessionmaker[Session], root: Path,
             **changes: object) -> Watcher:
    key = SecretStr("unit-test-key-0123456789abcdef")  # synthetic files carry a PatientID
    s = settings.model_copy(update={"watch_quiet_period_s": 0.0, "patient_id_key": key,
                                    **changes})
    return Watcher(s, sessions, create_celery_app(s.embedded()), WatchOptions(root))


def _step(watcher: Watcher) -> None:
    watcher.scan()
    watcher.queue_ready(threading.Event())


def _done(sessions: sessionmaker[Session], *image_ids: int) -> None:
    """Images finished by a worker, as the watcher's follow-up will find them."""
    with sessions() as session:
        lifecycle.mark_done(session, list(image_ids))
        session.commit()


def test_ignore_rules_and_the_symlink_boundary(tmp_path: Path) -> None:
    root = tmp_path / "in"
    folder = WatchFolder.of(root, ("*.part", "~*"))
    for name in ("a.dcm", "b.dcm.part", "~lock", ".hidden", "x.reason.txt", "sub/c.dcm",
                 "processed/old.dcm", ".tmp/d.dcm"):
        assert folder.ignored(root / name) == (name not in ("a.dcm", "sub/c.dcm")), name
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.dcm").write_bytes(b"x")
    root.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "escape.dcm").symlink_to(outside / "s.dcm")
    assert not folder.contains_real(root / "escape.dcm")
    assert [p.name for p in walk(folder)] == ["escape.dcm"]  # the linked folder is not entered


def test_scan_queues_new_files_once_and_skips_copies_temps_and_escapes(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    first = _dicom(root / "one.dcm", 1)
    _dicom(root / "nested dir/twö.dcm", 2)
    (root / "zz copy of one.dcm").write_bytes(first.read_bytes())
    (root / "three.dcm.part").write_bytes(first.read_bytes())
    outside = _dicom(tmp_path / "elsewhere/out.dcm", 3)
    (root / "link.dcm").symlink_to(outside)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root)
    _step(watcher)
    _step(watcher)  # a second scan finds nothing new and logs nothing new
    with sessions() as session:
        rows = session.execute(select(Image.source, Image.state, Image.enqueued_at)).all()
        batch = session.execute(select(Batch)).scalar_one()
    assert sorted(Path(r.source).name for r in rows) == ["one.dcm", "twö.dcm"]
    assert all(r.state == "queued" and r.enqueued_at is not None for r in rows)
    assert batch.name == f"watch:{root}:{batch.created_at:%Y-%m-%d}"
    assert batch.submitted == 3 and batch.duplicates == 1
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("queued ") for line in lines) == 2
    assert [line for line in lines if line.startswith("skipped duplicate")] == [
        "skipped duplicate zz copy of one.dcm: same image as image 1 (queued)"]
    assert sum("link.dcm: symbolic link to a target outside" in line for line in lines) == 1
    assert not any("three" in line for line in lines)


def test_a_name_that_is_not_utf8_is_refused_once_and_filed_with_its_reason(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    latin1 = _dicom(root / os.fsdecode(b"caf\xe9.dcm"), 1)  # from a Latin-1 system's share
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    _step(watcher)  # the second scan knows the file: no second registration
    watcher.followup.poll()
    with sessions() as session:
        [row] = session.execute(select(Image.source, Image.state, Image.error_code)).all()
        batch = session.execute(select(Batch)).scalar_one()
    assert tuple(row) == (f"{root}/caf\\xe9.dcm", "failed", "bad_file_name")
    assert batch.submitted == 1 and batch.duplicates == 0
    assert not latin1.exists()
    [reason] = (root / "failed").glob("*.reason.txt")
    assert "reason: bad_file_name" in reason.read_text()
    assert os.fsencode(reason.name) == b"caf\xe9.dcm.reason.txt"  # the file keeps its name
    # The log names it as the database does, never with a lone surrogate.
    assert "moved caf\\xe9.dcm to failed/caf\\xe9.dcm (image 1, failed)" in caplog.messages


def test_rows_committed_but_never_sent_are_sent_by_the_next_start(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    _step(_watcher(settings, sessions, root))
    with sessions() as session:  # as if killed between the commit and the message
        session.execute(update(Image).values(enqueued_at=None))
        session.commit()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _step(_watcher(settings, sessions, root))
    with sessions() as session:
        assert session.execute(select(Image.enqueued_at)).scalar_one() is not None
        assert session.execute(select(Image.id)).scalars().all() == [1]
    # One `queued PATH (image N)` line per file, as for any file queued, saying why.
    assert caplog.messages == [
        "queued a.dcm (image 1): registered by an earlier run that stopped before sending it",
        "re-sent 1 image(s) registered earlier whose message was never sent or was lost with "
        "an earlier run"]


def test_a_submits_rows_not_yet_sent_are_left_to_it_until_it_gives_up(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    _step(_watcher(settings, sessions, root))
    with sessions() as session:  # as `mammo submit` of this folder leaves its rows while it
        batch = Batch(name="nightly", priority="routine", mode="distributed")  # registers the rest
        session.add(batch)
        session.flush()
        session.execute(update(Image).values(enqueued_at=None, batch_id=batch.id))
        session.commit()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _step(_watcher(settings, sessions, root))
    with sessions() as session:
        assert session.execute(select(Image.enqueued_at)).scalar_one() is None
    assert not [m for m in caplog.messages if "queued" in m]
    with sessions() as session:  # the submit's send failed: nobody else will send it now
        assert lifecycle.owe_message(session, [1]) == [1]
        session.commit()
    _step(_watcher(settings, sessions, root))
    with sessions() as session:
        assert session.execute(select(Image.enqueued_at)).scalar_one() is not None
    assert "queued a.dcm (image 1): registered earlier, but its message could not be sent " \
           "then" in caplog.messages


def test_an_embedded_restart_names_each_file_it_queues_again(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    _dicom(root / "sub/b.dcm", 2)
    _step(_watcher(settings, sessions, root))
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root)
    watcher.options = WatchOptions(root, mode="embedded")  # its in-process queue is gone
    _step(watcher)
    assert sorted(m for m in caplog.messages if m.startswith("queued ")) == [
        "queued a.dcm (image 1): sent again: left queued by an earlier run",
        "queued sub/b.dcm (image 2): sent again: left queued by an earlier run"]


@pytest.mark.parametrize("crash_before_move", [False, True])
def test_move_action_files_results_and_reasons_and_survives_restarts(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        crash_before_move: bool) -> None:
    root = tmp_path / "in"
    _dicom(root / "sub/ok.dcm", 1)
    _dicom(root / "bad.dcm", 2)
    (root / "failed").mkdir(parents=True)
    (root / "failed/bad.dcm").write_bytes(b"an older file of the same name")
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    with sessions() as session:
        ids = dict(session.execute(select(Image.source, Image.id)).all())
        lifecycle.mark_done(session, [ids[str(root / "sub/ok.dcm")]])
        bad = ids[str(root / "bad.dcm")]
        # A failure of the content: filed at once (a truncated file waits; see below).
        lifecycle.mark_failed(session, bad, ErrorCode.NOT_MAMMOGRAPHY, "bad.dcm is a chest CT.")
        session.commit()
    if crash_before_move:  # the database says done, the watcher died before moving
        watcher = _watcher(settings, sessions, root, watch_after="move")
        watcher.scan()
    else:
        watcher.followup.poll()
    assert (root / "processed/sub/ok.dcm").is_file() and not (root / "sub/ok.dcm").exists()
    moved = root / f"failed/bad.image-{bad}.dcm"  # never overwrites an older namesake
    assert moved.is_file() and not (root / "bad.dcm").exists()
    reason = (root / f"failed/bad.image-{bad}.dcm.reason.txt").read_text()
    assert f"image_id: {bad}" in reason and "reason: not_mammography" in reason
    assert (root / "failed/bad.dcm").read_bytes() == b"an older file of the same name"
    before = sorted(os.listdir(root / "failed"))
    _step(watcher)  # nothing left to do: no new rows, nothing moved again
    assert sorted(os.listdir(root / "failed")) == before
    with sessions() as session:
        assert len(session.execute(select(Image.id)).all()) == 2
        # Where each file went is recorded: the exam report draws the view from there.
        archived = dict(session.execute(select(Image.id, Image.archived_path)).all())
    assert archived == {ids[str(root / "sub/ok.dcm")]: str(root / "processed/sub/ok.dcm"),
                        bad: str(moved)}


@pytest.mark.parametrize("after", ["leave", "move", "delete"])
def test_a_reused_file_name_is_a_new_image_and_nothing_is_overwritten(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        after: str) -> None:
    # Scanners and routers reuse names: Y.dcm is one image today, another tomorrow.
    root = tmp_path / "in"
    _dicom(root / "Y.dcm", 1)
    watcher = _watcher(settings, sessions, root, watch_after=after)
    _step(watcher)
    _done(sessions, 1)
    watcher.followup.poll()
    if after == "move":  # an earlier Y.dcm already filed: never overwritten either
        assert (root / "processed/Y.dcm").read_bytes() == _sop_file(tmp_path, 1).read_bytes()
    for n in (2, 3):  # a restart in between, then a live one
        watcher = _watcher(settings, sessions, root, watch_after=after) if n == 2 else watcher
        _dicom(root / "Y.dcm", n)
        _step(watcher)
        with sessions() as session:
            rows = session.execute(select(Image.id, Image.sop_instance_uid, Image.state)
                                   .order_by(Image.id)).all()
        assert [r.sop_instance_uid for r in rows] == [f"1.2.9.{k}" for k in range(1, n + 1)]
        assert rows[-1].state == "queued"
        if after != "leave":
            assert (root / "Y.dcm").is_file()  # not moved or deleted as image 1's file
        with sessions() as session:
            lifecycle.mark_done(session, [rows[-1].id])
            session.commit()
        watcher.followup.poll()
        _step(watcher)
    with sessions() as session:
        assert len(session.execute(select(Image.id)).all()) == 3
    if after == "move":
        filed = sorted(p.name for p in (root / "processed").iterdir())
        assert filed == ["Y.dcm", "Y.image-2.dcm", "Y.image-3.dcm"]
        sops = {_sop(root / "processed" / name) for name in filed}
        assert sops == {"1.2.9.1", "1.2.9.2", "1.2.9.3"}


def _sop_file(tmp_path: Path, n: int) -> Path:
    return _dicom(tmp_path / f"expected/{n}.dcm", n)


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_delete_action_removes_only_finished_files(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    _dicom(root / "b.dcm", 2)
    watcher = _watcher(settings, sessions, root, watch_after="delete")
    _step(watcher)
    _done(sessions, 1)
    watcher.followup.poll()
    assert sorted(os.listdir(root)) == ["b.dcm"]


def test_an_unreachable_broker_pauses_the_watch_and_loses_nothing(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    watcher = _watcher(settings, sessions, root)
    # Nothing listens on port 9: every send fails after the queue's own retries.
    watcher.ingestor.app = create_celery_app(
        watcher.settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: any("database or broker unavailable" in m for m in caplog.messages),
                 timeout=60, what="the outage warning")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    with sessions() as session:  # committed, not sent: the next start-up scan sends it
        assert session.execute(select(Image.enqueued_at)).scalar_one() is None
    _step(_watcher(settings, sessions, root))
    with sessions() as session:
        assert session.execute(select(Image.enqueued_at)).scalar_one() is not None


@pytest.mark.parametrize("name", ["mammo.sqlite3", "mammo.db"])
def test_the_database_and_the_reports_inside_the_folder_are_never_images(
        settings: Settings, tmp_path: Path, name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The defaults (`mammo.db`, `reports/`) are relative to the working directory: run
    from the drop folder, both lie inside it. Moving the database to failed/ lost every
    result; its -wal and -shm files became a new failed image at each scan."""
    root = tmp_path / "in"
    root.mkdir()
    s = settings.model_copy(update={"database_url": f"sqlite:///{root / name}",
                                    "report_dir": root / "reports"})
    engine = create_db_engine(s)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    _dicom(root / "a.dcm", 1)
    for report in ("reports/batch-1.html", "reports/exams/exam-1.2.9.pdf"):
        (root / report).parent.mkdir(parents=True, exist_ok=True)
        (root / report).write_bytes(b"%PDF-1.4 a report, not an image")
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(s, sessions, root, watch_after="move")
    watcher.run(_stopped())  # its start-up says where the database is
    with engine.connect():  # a connection open: SQLite's WAL files are there
        assert (root / f"{name}-wal").exists() and (root / f"{name}-shm").exists()
        _step(watcher)
        # What inotify reports while the database and the reports are written.
        for path in (root / name, *(root / f"{name}{c}" for c in ("-wal", "-shm", "-journal")),
                     root / "reports", root / "reports/batch-1.html",
                     root / "reports/exams/exam-1.2.9.pdf"):
            watcher.consider(path, finished=True)
        watcher.queue_ready(threading.Event())
        _step(watcher)
    with sessions() as session:
        assert session.execute(select(Image.source)).scalars().all() == [str(root / "a.dcm")]
    _done(sessions, 1)
    watcher.followup.poll()
    _step(watcher)
    assert (root / name).is_file() and not (root / "failed").exists()
    assert (root / "reports/exams/exam-1.2.9.pdf").is_file()
    assert (root / "processed/a.dcm").is_file()
    assert any(m.startswith(f"the SQLite database {root / name} lies inside the watched "
                            "folder") for m in caplog.messages)


def test_a_report_folder_that_is_the_watched_folder_is_warned_about(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    root.mkdir()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _watcher(settings, sessions, root, report_dir=root).run(_stopped())
    assert any(m.startswith("reports are written into the watched folder itself")
               for m in caplog.messages)
    assert not any("SQLite database" in m for m in caplog.messages)  # it lies elsewhere


def test_a_link_to_the_database_is_not_followed_into_it(
        settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    s = settings.model_copy(update={"database_url": f"sqlite:///{root / 'mammo.sqlite3'}"})
    engine = create_db_engine(s)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    (root / "scan.dcm").symlink_to(root / "mammo.sqlite3")
    watcher = _watcher(s, sessions, root)
    _step(watcher)
    assert len(watcher.tracker) == 0
    with sessions() as session:
        assert session.execute(select(Image.id)).first() is None


def _stopped() -> threading.Event:
    """A stop already asked for: `Watcher.run` says its start-up lines and returns."""
    stop = threading.Event()
    stop.set()
    return stop


def test_link_loops_and_dangling_links_are_ignored_and_named_once(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A symlink loop once ended the watch with ELOOP, again at every restart; a dangling
    # link was logged as its target "vanished" at every rescan.
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    (root / "l1.dcm").symlink_to("l2.dcm")
    (root / "l2.dcm").symlink_to("l1.dcm")
    (root / "d.dcm").symlink_to("nonexist.dcm")
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root)
    for _ in range(2):  # a rescan says nothing new
        _step(watcher)
        for name in ("l1.dcm", "d.dcm"):  # as inotify reports them
            watcher.consider(root / name, finished=True)
        watcher.queue_ready(threading.Event())
    with sessions() as session:
        assert session.execute(select(Image.source)).scalars().all() == [str(root / "a.dcm")]
    loop = "symbolic link that cannot be followed (Too many levels of symbolic links)"
    assert sorted(m for m in caplog.messages if m.startswith("ignored")) == [
        "ignored d.dcm: symbolic link to a missing file",
        f"ignored l1.dcm: {loop}", f"ignored l2.dcm: {loop}"]
    assert not any("vanished" in m or "nonexist" in m for m in caplog.messages)


def test_a_file_that_cannot_be_moved_stays_in_place_and_is_said_once(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A long name that is already filed: numbering it (.image-1) passes the 255-byte limit.
    root = tmp_path / "in"
    name = "a" * 246 + ".dcm"
    _dicom(root / name, 1)
    (root / "processed").mkdir()
    (root / "processed" / name).write_bytes(b"an older file of the same name")
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    _done(sessions, 1)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    _step(watcher)  # the rescan tries again, and says nothing new
    assert (root / name).is_file()
    [warning] = [m for m in caplog.messages if m.startswith("could not")]
    assert warning == (f"could not move {name} (image 1, done): File name too long; it stays "
                       "in place and is tried again at the next scan")


@pytest.mark.timeout(60)
def test_named_pipes_are_ignored_never_opened(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # Opening a FIFO blocks until someone writes to it: the watcher hung on one, then died.
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    os.mkfifo(root / "p.dcm")
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    watcher.consider(root / "p.dcm", finished=False, writing=True)  # inotify's create event
    watcher.queue_ready(threading.Event())
    with sessions() as session:  # a registered file replaced by a pipe: not taken for it
        lifecycle.mark_done(session, [1])
        session.commit()
    (root / "a.dcm").unlink()
    os.mkfifo(root / "a.dcm")
    watcher.followup.poll()
    _step(watcher)
    assert [m for m in caplog.messages if "pipe" in m] == [
        "ignored p.dcm: a named pipe, not a regular file",
        "ignored a.dcm: a named pipe, not a regular file"]
    assert not (root / "processed").exists()


def test_common_upload_temporary_names_are_ignored_by_default(tmp_path: Path) -> None:
    # WinSCP writes X.filepart, closes it, renames it: the temp name was queued, then the
    # real file was a "duplicate" of an image whose file had vanished.
    folder = WatchFolder.of(tmp_path, Settings().watch_ignore_patterns)
    for name in ("w.dcm.filepart", "w.dcm~", "w.dcm.part", "w.dcm.crdownload", "w.dcm.tmp",
                 "~w.dcm"):
        assert folder.ignored(tmp_path / name), name
    assert not folder.ignored(tmp_path / "w.dcm")


def test_temporary_name_patterns_ignore_letter_case(tmp_path: Path) -> None:
    # Windows upload tools write the suffix in capitals: these were queued as images.
    folder = WatchFolder.of(tmp_path, Settings().watch_ignore_patterns)
    for name in ("IM1.DCM.TMP", "a.dcm.PART", "a.dcm.FILEPART", "b.dcm.Crdownload"):
        assert folder.ignored(tmp_path / name), name
    assert not folder.ignored(tmp_path / "IM1.DCM")


def test_log_lines_show_control_characters_in_file_names_escaped(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # Raw, ESC ] 0 ; retitled the terminal tailing the log and ESC [ 2 J cleared it; a
    # newline started a line of the name's own making.
    root = tmp_path / "in"
    _dicom(root / "x\x1b]0;PWNED\x07\x1b[2J.dcm", 1)
    _dicom(root / "a\nERROR forged.dcm", 2)
    (root / "j\x1b[31m.dcm").write_bytes(b"\x1b[31m not an image " * 20)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _step(_watcher(settings, sessions, root))
    logged = "\n".join(caplog.messages)
    assert "queued x\\x1b]0;PWNED\\x07\\x1b[2J.dcm (image " in logged
    assert "queued a\\x0aERROR forged.dcm (image " in logged
    assert "rejected j\\x1b[31m.dcm (image " in logged
    assert not any(c in logged.replace("\n", "") for c in "\x1b\x07"), logged


def _written_long_ago(path: Path) -> Path:
    """Quiet for longer than any grace period: the tracker queues it at the next step."""
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 7200))
    return path


@pytest.mark.parametrize("after", ["move", "delete"])
@pytest.mark.parametrize("clock_behind", [False, True])
def test_a_stalled_writer_keeps_its_file_and_the_completed_file_is_queued_again(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, after: str,
        clock_behind: bool, caplog: pytest.LogCaptureFixture) -> None:
    # The writer paused past the grace period: its half file was queued, failed truncated
    # and filed away while still open; the completed file never came back.
    root = tmp_path / "in"
    data = _dicom(tmp_path / "src.dcm", 1).read_bytes()
    path = root / "s.dcm"
    root.mkdir()
    path.write_bytes(data[:8000])
    watcher = _watcher(settings, sessions, root, watch_after=after,
                       watch_incomplete_grace_s=60.0)
    _written_long_ago(path)
    _step(watcher)
    with sessions() as session:
        lifecycle.mark_failed(session, 1, ErrorCode.TRUNCATED, "s.dcm is truncated.")
        session.commit()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    _step(watcher)
    assert path.read_bytes() == data[:8000]  # left where its writer has it
    assert ("kept s.dcm in place: image 1 failed (truncated), and its writer may not have "
            "finished; filed if it stays unchanged for 60 s") in caplog.messages
    with path.open("ab") as handle:  # the writer resumes and finishes
        handle.write(data[8000:])
    if clock_behind:  # a file server whose clock runs an hour behind the database's
        _written_long_ago(path)
    watcher.followup.poll()
    watcher.queue_ready(threading.Event())
    assert "queued s.dcm (image 1) again: it had failed (truncated)" in caplog.messages
    with sessions() as session:
        assert session.execute(select(Image.state)).scalars().all() == ["queued"]
        lifecycle.mark_done(session, [1])
        session.commit()
    watcher.followup.poll()
    assert not path.exists() and not (root / "failed").exists()
    assert (root / "processed/s.dcm").is_file() == (after == "move")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("mtime_ahead_s", [0, 3600])
def test_a_truncated_file_left_unchanged_is_filed_after_the_grace_period(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        mtime_ahead_s: int, caplog: pytest.LogCaptureFixture) -> None:
    # An mtime ahead of the failure (copied with `cp -p` from a machine whose clock runs
    # ahead, or a file server's clock) made the file look written since: it was queued,
    # failed and queued again every few seconds, forever.
    root = tmp_path / "in"
    root.mkdir()
    path = root / "s.dcm"
    path.write_bytes(_dicom(tmp_path / "src.dcm", 1).read_bytes()[:8000])
    ahead = path.stat().st_mtime + mtime_ahead_s
    os.utime(path, (ahead, ahead))
    watcher = _watcher(settings, sessions, root, watch_after="move",
                       watch_incomplete_grace_s=60.0)
    # Queued at once (the tracker's own grace period is not what this is about).
    watcher.tracker = StabilityTracker(quiet_s=0.0, grace_s=0.0)
    clock = watcher.followup.files.clock = _Clock()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _step(watcher)
    with sessions() as session:
        lifecycle.mark_failed(session, 1, ErrorCode.TRUNCATED, "s.dcm is truncated.")
        session.commit()
    for _ in range(3):
        watcher.followup.poll()
        _step(watcher)
        clock.now += 20
    assert path.exists() and not [m for m in caplog.messages if "again" in m]
    clock.now += 1
    watcher.followup.poll()
    assert not path.exists()
    assert "reason: truncated" in (root / "failed/s.dcm.reason.txt").read_text()
    assert not [m for m in caplog.messages if "again" in m]


def test_a_renamed_file_does_not_inherit_the_failure_of_its_vanished_temporary_name(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # An upload tool's temporary name that the ignore patterns do not know: queued, then
    # renamed; the worker fails it missing_file, and the complete file was filed with it.
    root = tmp_path / "in"
    temporary = _written_long_ago(_dicom(root / "w.dcm.upload", 1))
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    temporary.rename(root / "w.dcm")
    _step(watcher)  # a copy of image 1, still queued
    with sessions() as session:
        lifecycle.mark_failed(session, 1, ErrorCode.MISSING_FILE, "w.dcm.upload is gone.")
        session.commit()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    watcher.queue_ready(threading.Event())
    assert "queued w.dcm (image 1) again: it had failed (missing_file)" in caplog.messages
    with sessions() as session:
        assert session.execute(select(Image.source, Image.state)).one() == (
            str(root / "w.dcm"), "queued")
        lifecycle.mark_done(session, [1])
        session.commit()
    watcher.followup.poll()
    assert (root / "processed/w.dcm").is_file() and not (root / "failed").exists()


def test_a_copy_moved_away_does_not_become_the_images_archived_path(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    root = tmp_path / "in"
    first = _dicom(root / "a.dcm", 1)
    (root / "b.dcm").write_bytes(first.read_bytes())  # the same image under a second name
    watcher = _watcher(settings, sessions, root, watch_after="move")
    _step(watcher)
    _done(sessions, 1)
    watcher.followup.poll()
    assert sorted(os.listdir(root / "processed")) == ["a.dcm", "b.dcm"]
    with sessions() as session:
        assert session.execute(select(Image.archived_path)).scalar_one() == str(
            root / "processed/a.dcm")


def _tick(watcher: Watcher) -> None:
    """One pass of the watch loop with every step due (the folder checked first)."""
    watcher.tick(dict.fromkeys(("scan", "follow", "exams", "sweep"), 0.0), threading.Event())


def _states(sessions: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with sessions() as session:
        return [tuple(r) for r in session.execute(
            select(Image.state, Image.error_code).order_by(Image.id))]


@pytest.mark.parametrize("restart", [False, True])
def test_images_failed_missing_file_while_the_share_was_away_are_scored_once_it_is_back(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, restart: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    # The share went away for a moment while four images waited in the queue: the worker
    # failed each missing_file, the share came back with every file intact, and the watcher
    # kept them a while, then filed them in failed/, never scored (a restart did not help).
    from worker.pipeline import process_chunk
    from worker.runtime import WorkerRuntime

    root = tmp_path / "in"
    for n in range(1, 5):
        _dicom(root / f"g{n}.dcm", n)
    watcher = _watcher(settings, sessions, root, watch_after="move",
                       watch_incomplete_grace_s=60.0)
    clock = watcher.followup.files.clock = _Clock()
    runtime = WorkerRuntime(watcher.settings)
    caplog.set_level(logging.INFO, logger="mammo.watch")
    try:
        _tick(watcher)
        assert _states(sessions) == [("queued", None)] * 4
        root.rename(tmp_path / "unmounted")  # the share goes away
        process_chunk([1, 2, 3, 4], token="during-the-gap", runtime=runtime)
        assert _states(sessions) == [("failed", "missing_file")] * 4
        _tick(watcher)  # the watcher sees the folder gone, and waits
        (tmp_path / "unmounted").rename(root)  # back, every file intact
        if restart:
            watcher.watch.stop()
            watcher = _watcher(settings, sessions, root, watch_after="move",
                               watch_incomplete_grace_s=60.0)
            clock = watcher.followup.files.clock = _Clock()
        _tick(watcher)  # rescanned: each file contradicts its image's failure
        assert _states(sessions) == [("queued", None)] * 4
        clock.now += 61  # past the grace period: nothing is filed as failed
        _tick(watcher)
        process_chunk([1, 2, 3, 4], token="after-the-gap", runtime=runtime)
        _tick(watcher)
    finally:
        watcher.watch.stop()
    assert _states(sessions) == [("done", None)] * 4
    assert sorted(os.listdir(root / "processed")) == [f"g{n}.dcm" for n in range(1, 5)]
    assert not (root / "failed").exists()
    with sessions() as session:  # the same four images, each queued again once
        batch = session.execute(select(Batch)).scalar_one()
        archived = session.execute(select(Image.archived_path).order_by(Image.id)).scalars()
        assert list(archived) == [str(root / f"processed/g{n}.dcm") for n in range(1, 5)]
    assert batch.duplicates == 0
    for n in range(1, 5):
        assert caplog.messages.count(
            f"looking at g{n}.dcm again: image {n} failed (missing_file) though its file is "
            "here (away when the worker looked: a share unmounted for a while?)") == 1
        assert caplog.messages.count(
            f"queued g{n}.dcm (image {n}) again: it had failed (missing_file)") == 1


def test_a_file_the_worker_still_cannot_find_after_one_retry_is_filed_not_queued_forever(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A worker that sees another folder at this path (the share mounted elsewhere on its
    # machine) fails the image missing_file however often it is queued: one retry, then
    # the failure stands, filed once its file stays unchanged for the grace period.
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    watcher = _watcher(settings, sessions, root, watch_after="move",
                       watch_incomplete_grace_s=60.0)
    clock = watcher.followup.files.clock = _Clock()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    _step(watcher)
    for attempt in range(2):
        with sessions() as session:  # as the worker writes it
            lifecycle.mark_failed(session, 1, ErrorCode.MISSING_FILE,
                                  f"a.dcm no longer exists at {root}.")
            session.commit()
        clock.now += 1
        watcher.followup.poll()
        _step(watcher)
        assert _states(sessions) == [("queued", None) if attempt == 0
                                     else ("failed", "missing_file")]
    assert (root / "a.dcm").is_file()
    assert ("kept a.dcm in place: image 1 failed (missing_file), though a file is here (a "
            "worker that sees another folder at this path, the share gone again, or a file it "
            "cannot read?); filed if it stays unchanged for 60 s") in caplog.messages
    clock.now += 61
    watcher.followup.poll()
    assert not (root / "a.dcm").exists()
    assert "reason: missing_file" in (root / "failed/a.dcm.reason.txt").read_text()
    assert sum(m.startswith("queued a.dcm (image 1) again") for m in caplog.messages) == 1


def test_a_missing_file_failure_stands_when_another_file_took_its_name(
        settings: Settings, sessions: sessionmaker[Session], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # The worker found another file at the path ("replaced by another file after it was
    # queued"): that file is a new image, never the failed one's retry.
    root = tmp_path / "in"
    _dicom(root / "a.dcm", 1)
    watcher = _watcher(settings, sessions, root, watch_after="move",
                       watch_incomplete_grace_s=60.0)
    _step(watcher)
    _dicom(root / "a.dcm", 2)
    with sessions() as session:
        lifecycle.mark_failed(session, 1, ErrorCode.MISSING_FILE,
                              "a.dcm was replaced by another file after it was queued.")
        session.commit()
    caplog.set_level(logging.INFO, logger="mammo.watch")
    watcher.followup.poll()
    _step(watcher)
    with sessions() as session:
        rows = session.execute(select(Image.id, Image.sop_instance_uid, Image.state,
                                      Image.error_code).order_by(Image.id)).all()
    assert [tuple(r) for r in rows] == [(1, "1.2.9.1", "failed", "missing_file"),
                                        (2, "1.2.9.2", "queued", None)]
    assert not any("again" in m for m in caplog.messages)
