"""Full scans name the folders they cannot look inside, once, instead of passing over them
in silence."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from producer.watch import scanner
from producer.watch.folder import WatchFolder
from producer.watch.scanner import walk


def _deeper_than_path_max(root: Path) -> Path:
    """22 folders of 202-character names below ``root`` (over 4,400 bytes), a file at the
    bottom: made through folder handles, as no path to it can be opened."""
    fd = os.open(root, os.O_RDONLY)
    path = root
    try:
        for i in range(22):
            name = f"{i:02d}" + "x" * 200
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = deeper, path / name
        os.close(os.open("deep.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return path


def test_a_folder_beyond_path_max_is_named_once(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "near.dcm").write_bytes(b"x")
    deep = _deeper_than_path_max(root)
    folder = WatchFolder.of(root, ())
    with caplog.at_level(logging.WARNING, logger="mammo.watch"):
        assert [p.name for p in walk(folder)] == ["near.dcm"]
        assert [p.name for p in walk(folder)] == ["near.dcm"]  # the next scan: said once
    [record] = [r for r in caplog.records if "cannot look inside folder" in r.getMessage()]
    message = record.getMessage()
    assert "longer than the system allows" in message and "shorten the folder names" in message
    # The first folder too long to open is named, from the top of the watched folder, with
    # its middle left out (the whole path would be over 4,000 characters of log line).
    too_long = next(p for p in [deep, *deep.parents]
                    if len(os.fsencode(p)) > 4095 >= len(os.fsencode(p.parent)))
    shown = str(too_long.relative_to(root))
    assert shown[:100] in message and shown[-100:] in message and len(message) < 500


def test_a_folder_that_cannot_be_listed_is_named_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Root lists any folder: the refusal is simulated at os.scandir.
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "a.dcm").write_bytes(b"x")
    (root / "b.dcm").write_bytes(b"x")
    real_scandir = os.scandir
    locked = {root / "locked"}

    def scandir(path: Path) -> object:
        if Path(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    folder = WatchFolder.of(root, ())
    with caplog.at_level(logging.WARNING, logger="mammo.watch"):
        assert [p.name for p in walk(folder)] == ["b.dcm"]
        assert [p.name for p in walk(folder)] == ["b.dcm"]
        locked.clear()  # someone fixed the permissions
        assert sorted(p.name for p in walk(folder)) == ["a.dcm", "b.dcm"]
        locked.add(root / "locked")  # and broke them again: said again
        assert [p.name for p in walk(folder)] == ["b.dcm"]
    said = [r.getMessage() for r in caplog.records]
    assert said == ["cannot look inside folder locked: permission denied; retried at each "
                    "scan"] * 2


def test_a_folder_vanishing_mid_scan_is_not_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "in"
    root.mkdir()
    folder = WatchFolder.of(root, ())
    with caplog.at_level(logging.WARNING, logger="mammo.watch"):
        assert list(walk(folder, root / "gone")) == []
    assert caplog.records == []
