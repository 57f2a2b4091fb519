"""Info.txt rows are read case-insensitively; a row the loader cannot interpret is refused
with its line number, never dropped or relabelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import left_out_warning, load_dataset
from shared.enums import Label
from shared.errors import DatasetError
from shared.synthetic import synth_mammogram, write_png


def _mias(root: Path, rows: str) -> Path:
    root.mkdir(parents=True)
    for n in range(1, 5):
        write_png(root / f"mdb{n:03d}.png", synth_mammogram(np.random.default_rng(n), (128, 96)))
    (root / "Info.txt").write_text("A header line\n\n" + rows, encoding="latin-1")
    return root


def test_lower_case_rows_are_read(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 g circ b 50 40 10\nMDB002 G NORM\n"
                 "mdb003 d calc m *note 3*\nmdb004\tF\tSPIC\tB\r\n")
    labels = {i.id: i.label for i in load_dataset(data)}
    assert labels == {"mdb001": Label.BENIGN, "mdb002": Label.NORMAL,
                      "mdb003": Label.MALIGNANT, "mdb004": Label.BENIGN}


@pytest.mark.parametrize(("row", "said"), [
    ("mdb003 G CIRC 50 40 10", "line 5: CIRC has no severity"),
    ("mdb003 G CIRC X 50 40 10", "line 5: severity 'X' is not B"),
    ("mdb003 G BLOB B", "line 5: class 'BLOB' is not NORM"),
    ("mdb003 G NORM B", "line 5: 'mdb003 G NORM B' is NORM but gives a severity"),
    ("mdb1000 G NORM", "line 5: 'mdb1000 G NORM' is not a truth row"),
])
def test_a_row_it_cannot_interpret_is_refused_with_its_line(tmp_path: Path, row: str,
                                                            said: str) -> None:
    data = _mias(tmp_path / "m", f"mdb001 G NORM\nmdb002 G NORM\n{row}\nmdb004 G NORM\n")
    with pytest.raises(DatasetError, match="Info.txt " + said.replace("(", r"\(")):
        load_dataset(data)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "")
    (data / "Info.txt").write_bytes(b"\xef\xbb\xbfmdb001 G NORM\r\nmdb002 G NORM\r\n"
                                    b"mdb003 G CIRC B 50 40 10\r\nmdb004 G CIRC M 50 40 10\r\n")
    assert [i.id for i in load_dataset(data)] == ["mdb001", "mdb002", "mdb003", "mdb004"]


def test_file_names_match_their_rows_in_any_case(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                 "mdb004 G CIRC M 50 40 10\n")
    (data / "mdb004.png").rename(data / "MDB004.PNG")
    (data / "mdb001.png").rename(data / "Mdb001.png")
    loaded = {i.id: i for i in load_dataset(data)}
    assert sorted(loaded) == ["mdb001", "mdb002", "mdb003", "mdb004"]
    assert loaded["mdb004"].path.name == "MDB004.PNG"
    assert loaded["mdb004"].label is Label.MALIGNANT


def test_an_image_without_a_truth_row_is_refused_by_name(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n")
    (data / "MDB004.PNG").write_bytes((data / "mdb004.png").read_bytes())
    (data / "mdb004.png").unlink()
    (data / "notes.txt").write_text("not an image", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no truth row for 1 image file\(s\) in the folder "
                       r"\(MDB004.PNG\), so their labels are unknown"):
        load_dataset(data)


def test_two_files_of_one_image_are_refused(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                 "mdb004 G NORM\n")
    (data / "mdb004.pgm").write_bytes(b"P5\n2 2\n255\n\x00\x01\x02\x03")
    with pytest.raises(DatasetError, match=r"mdb004\.pgm and mdb004\.png in .* are each "
                       "image mdb004: keep one of them"):
        load_dataset(data)


def test_rows_without_their_image_are_named_not_refused(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                 "mdb004 G NORM\nmdb005 G CIRC B 50 40 10\nmdb006 G NORM\n")
    images = load_dataset(data)
    assert len(images) == 4
    said = left_out_warning(images, data)
    assert said is not None
    assert "lists 2 image(s) that are not in the folder (mdb005, mdb006)" in said
    (data / "Info.txt").write_text("mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                                   "mdb004 G NORM\n", encoding="latin-1")
    assert left_out_warning(load_dataset(data), data) is None


def test_an_image_in_a_format_mias_does_not_hold_is_named_as_such(tmp_path: Path) -> None:
    # mdb001 has its row: the file's format, not a missing row, is why it cannot be read.
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                 "mdb004 G NORM\n")
    (data / "mdb001.png").rename(data / "mdb001.jpg")
    with pytest.raises(DatasetError) as refused:
        load_dataset(data)
    said = str(refused.value)
    assert "(mdb001.jpg) are not in a format a MIAS folder holds" in said
    assert "mdbNNN.pgm or mdbNNN.png" in said and "no truth row" not in said


@pytest.mark.parametrize(("encoding", "said"), [
    ("utf-16", "saved as UTF-16,"), ("utf-16-le", "saved as UTF-16 or another encoding"),
    ("utf-32", "saved as UTF-32,")])
def test_an_info_txt_saved_as_utf16_is_told_to_be_saved_as_utf8(
        tmp_path: Path, encoding: str, said: str) -> None:
    data = _mias(tmp_path / "m", "")
    (data / "Info.txt").write_text("mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                                   "mdb004 G NORM\n", encoding=encoding)
    with pytest.raises(DatasetError, match=f"Info.txt is {said}.* save it as UTF-8 or ASCII"):
        load_dataset(data)
