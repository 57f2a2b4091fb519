"""Files a watcher of a release before migration 0008 moved to processed/ are found there.

Upgrade probe: `mammo watch --after move` of an earlier release filed each done file in
its drop folder's processed/ and recorded nothing (``images.archived_path`` came with 0008,
NULL for them). After the upgrade nothing found them: `mammo rescore --reread` kept their
earlier result ("missing_file; ... no longer exists at <drop>"), each `--reread --dry-run`
counted them again, and the exam PDFs said "image not available (moved or deleted)".
Readers now look where that watcher filed the file, numbered names included, and take it
only when it is the same file by the identity registration read.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select, update

from producer.cli.exit_codes import ExitCode
from producer.watch.actions import AfterProcessing
from producer.watch.folder import WatchFolder
from producer.watch.identity import RegisteredFiles
from producer.watch.scanner import KnownImage
from shared.db.schema import Image, Prediction
from shared.imaging.identity import current_location
from shared.imaging.readers import read_header
from shared.synthetic import make_exam_set, synth_mammogram, write_png
from tests.helpers.cli import invoke_cli

KEY = "filed-before-0008-key-0123456789a"


def _exam(folder: Path, seed: int = 31) -> list[Path]:
    return make_exam_set(folder, n_exams=1, seed=seed)


def test_a_file_moved_unrecorded_is_found_in_processed_and_only_if_it_is_the_same_file(
        tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    first, second = _exam(drop / "ward")[:2]  # drop/ward/exam0000_LCC.dcm, ...
    identity = read_header(first).identity
    filed = drop / "processed" / "ward" / first.name  # the drop folder's top, same path
    filed.parent.mkdir(parents=True)
    shutil.copyfile(second, filed)  # another image under that name: never this one
    first.rename(filed.with_name("exam0000_LCC.image-7.dcm"))

    def where(image_id: int = 7, known_as: str | None = identity) -> str:
        return current_location(str(first), None, image_id=image_id, identity=known_as)

    assert where() == str(filed.with_name("exam0000_LCC.image-7.dcm"))
    assert where(image_id=8) == str(first)  # another image's numbered name: not looked at
    assert current_location(str(first), None) == str(first)  # no identity: nothing to check
    assert where(known_as="path:" + str(first)) == str(first)  # known by its path alone

    filed.with_name("exam0000_LCC.image-7.dcm").rename(filed.with_name("other.dcm"))
    assert where() == str(first)  # same name, another file: the source, reported gone

    # The name reused in the drop folder by a newer file: the filed one is still this image.
    filed.with_name("other.dcm").rename(filed)
    shutil.copyfile(second, first)
    assert where() == str(filed)
    # Back at its path (re-sent): read there, whatever processed/ holds.
    shutil.copyfile(filed, first)
    assert where() == str(first)


def test_a_file_known_by_its_bytes_is_taken_only_with_the_same_bytes(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    source = drop / "scan.png"
    write_png(source, synth_mammogram(np.random.default_rng(3)))
    identity = read_header(source).identity
    assert identity.startswith("sha256:")
    filed = drop / "processed" / "scan.png"
    filed.parent.mkdir()
    write_png(filed, synth_mammogram(np.random.default_rng(4)))  # the same name, other pixels
    kept = source.read_bytes()
    source.unlink()
    assert current_location(str(source), None, image_id=1, identity=identity) == str(source)
    filed.write_bytes(kept)
    assert current_location(str(source), None, image_id=1, identity=identity) == str(filed)


def test_where_the_watcher_files_a_file_unrecorded_is_where_readers_look(
        tmp_path: Path) -> None:
    """The watcher's own move with nowhere to record (an earlier release's), onto names
    already taken twice: readers follow the same numbering."""
    drop = tmp_path / "drop"
    files = _exam(drop)
    mine, others = files[0], files[1:3]
    identity = read_header(mine).identity
    processed = drop / "processed"
    processed.mkdir()
    for other, name in zip(others, (mine.name, "exam0000_LCC.image-5.dcm"), strict=True):
        shutil.copyfile(other, processed / name)
    actions = AfterProcessing(WatchFolder.of(drop, ()), "move", logging.getLogger("test"),
                              RegisteredFiles())  # no sessions: archived_path not written
    image = KnownImage(5, "done", None, None, None, None, identity=identity,
                       source=str(mine))
    moved = actions.apply(mine, image)

    assert moved == processed / "exam0000_LCC.image-5.2.dcm" and not mine.exists()
    assert current_location(str(mine), None, image_id=5, identity=identity) == str(moved)


def test_the_report_and_rescore_reread_read_files_an_earlier_watcher_moved_unrecorded(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    drop = tmp_path / "drop"
    _exam(drop, seed=33)

    def mammo(*args: str) -> tuple[int, str]:
        return invoke_cli(list(args), monkeypatch, tmp_path, database_url=url,
                          model=str(tiny_model_dir), patient_id_key=KEY,
                          report_dir=str(tmp_path / "reports"))

    code, out = mammo("run", str(drop))
    assert code == ExitCode.OK, out
    engine = create_engine(url)
    processed = drop / "processed"
    processed.mkdir()
    with engine.begin() as conn:  # as the earlier release left them: moved, not recorded
        for source in conn.execute(select(Image.source)).scalars():
            Path(source).rename(processed / Path(source).name)
        conn.execute(update(Prediction).values(reader_version=None))
        assert set(conn.execute(select(Image.archived_path)).scalars()) == {None}

    with caplog.at_level(logging.INFO, logger="shared.reports.view_images"):
        code, out = mammo("report", "image", "1")
    assert code == ExitCode.OK, out
    assert (tmp_path / "reports" / "exams" / "image-1.pdf").is_file()
    # Drawn: not "image not available (the file is no longer at its path ...)".
    assert not [r.getMessage() for r in caplog.records if "report" in r.getMessage()]
    code, out = mammo("rescore", "--reread", "--batch", "1")
    assert code == ExitCode.OK and "processed 4 re-scored image(s)" in out, out
    code, out = mammo("rescore", "--reread", "--batch", "1", "--dry-run")
    engine.dispose()
    assert code == ExitCode.OK and "0 done image(s)" in out, out
