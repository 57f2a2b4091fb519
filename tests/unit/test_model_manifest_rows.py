"""The CSV manifest layout: a byte-order mark, empty paths, bad laterality, missing files,
equal stems."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.datasets import load_dataset
from shared.enums import Laterality
from shared.errors import DatasetError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """The manifest ``text`` at ``path``, with the files its rows name (where a name is
    given), as stand-ins: the rows are judged before any image is read."""
    path.write_text(text, encoding=encoding)
    for line in text.splitlines()[1:]:
        cell = line.split(",")[0]
        if cell and not cell.startswith("missing"):
            (path.parent / cell).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / cell).write_bytes(b"")
    return path


def test_a_byte_order_mark_does_not_break_the_header(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "set.csv", "path,label,laterality\na.png,normal,R\n",
                      encoding="utf-8-sig")
    [image] = load_dataset(manifest)
    assert (image.id, image.laterality) == ("a", Laterality.RIGHT)


@pytest.mark.parametrize(("row", "said"), [
    (",normal,L", "set.csv line 3: the path is empty"),
    ("b.png,normal,Q", "set.csv line 3: laterality 'Q' is not L, R, B"),
    ("a.png,benign,L", "set.csv line 3: a.png is already listed on line 2"),
    # Refused, not skipped: training or evaluating on a silent subset is not what was asked.
    ("missing/mdb999.png,benign,L", "set.csv line 3: missing/mdb999.png not found"),
])
def test_a_bad_row_names_its_line(tmp_path: Path, row: str, said: str) -> None:
    manifest = _write(tmp_path / "set.csv", f"path,label,laterality\na.png,normal,L\n{row}\n")
    with pytest.raises(DatasetError, match=said):
        load_dataset(manifest)


def test_equal_stems_in_two_folders_are_told_apart_by_their_paths(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "set.csv", "path,label\nleft/img.png,normal\n"
                      "right/img.png,benign\nother.png,malignant\n")
    ids = [i.id for i in load_dataset(manifest)]
    assert ids == ["left/img", "other", "right/img"]  # a unique stem keeps its stem
