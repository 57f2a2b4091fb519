"""Which files a folder given to `mammo run`/`submit` yields: never our own database and
reports, never a file a link points to outside the folder, and nothing passed over unsaid."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from producer.cli.exit_codes import ExitCode
from producer.discovery import OwnFiles, iter_files
from shared.config import Settings
from shared.db.schema import Image
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli


def _found(folder: Path, own: OwnFiles | None = None) -> tuple[list[str], dict[str, str]]:
    """Names yielded, and names passed over with their reasons."""
    skipped: dict[str, str] = {}
    names = [p.name for p in iter_files([folder], own=own or OwnFiles(),
                                        on_skip=lambda p, why: skipped.update({p.name: why}))]
    return names, skipped


def test_the_configured_database_and_report_folder_are_not_walked(tmp_path: Path) -> None:
    # A database under any name (not only *.db), with what SQLite keeps beside it.
    folder = tmp_path / "night"
    make_exam_set(folder, n_exams=1, seed=5)
    for name in ("pacs.sqlite", "pacs.sqlite-wal", "pacs.sqlite-shm", "pacs.sqlite-journal"):
        (folder / name).write_bytes(b"SQLite format 3\0")
    (folder / "out" / "exams").mkdir(parents=True)
    (folder / "out" / "exams" / "exam-1.pdf").write_bytes(b"%PDF-1.7")
    settings = Settings(database_url=f"sqlite:///{folder / 'pacs.sqlite'}",
                        report_dir=folder / "out", _env_file=None)  # type: ignore[call-arg]
    names, skipped = _found(folder, OwnFiles.of(settings))
    assert len(names) == 4 and all(n.endswith(".dcm") for n in names), names
    assert skipped == {}
    # Another installation's files are not ours: they are walked as any file is.
    assert "pacs.sqlite-wal" in _found(folder)[0]


def test_mammo_run_dot_in_the_folder_of_its_database_and_reports_reads_only_images(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The defaults: mammo.db and reports/ in the working folder, which is also the one given.
    # Its -wal and -shm, then last run's exam PDFs, were queued and failed as not images.
    make_exam_set(tmp_path / "night", n_exams=1, seed=6)
    for _ in range(2):
        code, out = invoke_cli(["run", ".", "--format", "json"], monkeypatch, tmp_path,
                               model=str(tiny_model_dir), chunk_size="4")
        assert code == ExitCode.OK, out
    assert list((tmp_path / "reports").rglob("*.pdf"))  # there was something to walk into
    engine = create_engine(f"sqlite:///{tmp_path / 'mammo.db'}")
    with engine.connect() as conn:
        sources = conn.execute(select(Image.source)).scalars().all()
    engine.dispose()
    assert sorted(Path(s).parent.name for s in sources) == ["night"] * 4, sources


def test_links_out_of_the_folder_and_non_files_are_skipped_and_named(tmp_path: Path) -> None:
    folder, outside = tmp_path / "night", tmp_path / "elsewhere"
    [inside, *_] = make_exam_set(folder, n_exams=1, seed=7)
    [secret, *_] = make_exam_set(outside, n_exams=1, seed=8)
    (folder / "passwd.dcm").symlink_to(secret)
    (folder / "gone.dcm").symlink_to(tmp_path / "never-written.dcm")
    (folder / "alias.dcm").symlink_to(inside)  # inside the folder: followed, as before
    os.mkfifo(folder / "pipe.dcm")
    names, skipped = _found(folder)
    assert "alias.dcm" in names and len(names) == 5, names
    assert skipped == {
        "passwd.dcm": "symbolic link to a target outside the folder given (never followed)",
        "gone.dcm": "symbolic link to a missing file",
        "pipe.dcm": "a named pipe, not a regular file",
    }
    # Named on the command line, a link is the user's choice.
    assert [p.name for p in iter_files([folder / "passwd.dcm"])] == ["passwd.dcm"]


def test_mammo_run_says_which_files_it_skipped_and_never_reads_a_linked_outside_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "night"
    make_exam_set(folder, n_exams=1, seed=9)
    secret = tmp_path / "secret.txt.dcm"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / "passwd.dcm").symlink_to(secret)
    (folder / "gone.dcm").symlink_to(tmp_path / "never-written.dcm")
    db = tmp_path / "m.db"
    code, out = invoke_cli(["run", str(folder), "--format", "json"], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{db}", model=str(tiny_model_dir),
                           report_dir=str(tmp_path / "reports"), chunk_size="4")
    assert code == ExitCode.OK, out  # nothing failed: the link was never read
    said = " ".join(out.split())
    assert "4 file(s): 4 new" in said and "2 skipped (not read)" in said, said
    assert "skipped 2 file(s)" in said and "passwd.dcm (symbolic link to a target outside" \
        in said and "gone.dcm (symbolic link to a missing file)" in said, said
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    assert len(rows) == 4 and not any("passwd" in r["source"] for r in rows)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM images WHERE source LIKE '%passwd%'"
                            ).fetchone() == (0,)


def test_a_patient_cd_reads_its_images_and_passes_over_the_index_and_viewer(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # PS3.10 media as a CD or a PACS export writes it: each non-image file had failed, so
    # every imported CD exited 3 and a real failure among its images could not be told apart.
    cd = tmp_path / "cd"
    make_exam_set(cd / "DICOM", n_exams=1, seed=7)
    for name in ("DICOMDIR", "AUTORUN.INF", "INDEX.HTM", "VERSION", "README",
                 "VIEWER/viewer.exe", "VIEWER/dcmtk.dll", "VIEWER/settings.xml",
                 "VIEWER/viewer.ini", "VIEWER/help/index.html", "VIEWER/help/style.css"):
        (cd / name).parent.mkdir(parents=True, exist_ok=True)
        (cd / name).write_bytes(b"MZ\x90\x00 not an image")
    names, skipped = _found(cd)
    assert sorted(names) == sorted(p.name for p in (cd / "DICOM").rglob("*.dcm"))
    assert len(names) == 4 and skipped == {}
    code, out = invoke_cli(["run", str(cd), "--format", "json"], monkeypatch, tmp_path,
                           model=str(tiny_model_dir), chunk_size="4")
    assert code == ExitCode.OK, out
    engine = create_engine(f"sqlite:///{tmp_path / 'mammo.db'}")
    with engine.connect() as conn:
        states = conn.execute(select(Image.state)).scalars().all()
    engine.dispose()
    assert [str(s) for s in states].count("done") == 4 and len(states) == 4, states
