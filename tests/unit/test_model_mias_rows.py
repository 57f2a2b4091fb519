"""Info.txt rows are read case-insensitively; a row the loader cannot interpret, or rows that
contradict each other, are refused with their line numbers, never dropped or relabelled.
Info.txt is found in any case, and the images beside it or, where none is, in its subfolders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import layout_of, left_out_warning, load_dataset
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


@pytest.mark.parametrize("name", ["info.txt", "INFO.TXT"])
def test_info_txt_is_found_in_any_case(tmp_path: Path, name: str) -> None:
    # As a Windows share, a FAT stick or a zip may write it.
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G CIRC B 50 40 10\nmdb003 G NORM\n"
                 "mdb004 G NORM\n")
    (data / "Info.txt").rename(data / name)
    assert layout_of(data) == "mias"
    assert {i.id: i.label for i in load_dataset(data)}["mdb002"] is Label.BENIGN
    (data / name).write_text("mdb001 G NORM\nmdb002 G NORM\nmdb003 G BLOB B\nmdb004 G NORM\n")
    with pytest.raises(DatasetError, match=f"{name} line 3: class 'BLOB'"):
        load_dataset(data)


def test_two_info_txt_differing_in_case_are_refused(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n")
    (data / "INFO.TXT").write_text("mdb004 G NORM\n")
    with pytest.raises(DatasetError, match=r"holds INFO\.TXT and Info\.txt: two truth tables"):
        load_dataset(data)


def _in_subfolder(tmp_path: Path, sub: str = "all-mias") -> Path:
    """Kaggle's layout: Info.txt at the top, the images in a subfolder beside it."""
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G CIRC M 50 40 10\nmdb003 G NORM\n"
                 "mdb004 G NORM\nmdb005 G NORM\n")
    (data / sub).mkdir(parents=True)
    for n in range(1, 5):
        (data / f"mdb{n:03d}.png").rename(data / sub / f"mdb{n:03d}.png")
    return data


def test_images_in_a_subfolder_beside_info_txt_are_read(tmp_path: Path) -> None:
    data = _in_subfolder(tmp_path)
    (data / "all-mias" / "._mdb001.png").write_bytes(b"\0\5\26\7")  # a Mac's zip: not data
    (data / "Licence.txt").write_text("the database's licence")
    images = load_dataset(data)
    assert {i.id: i.label for i in images} == {
        "mdb001": Label.NORMAL, "mdb002": Label.MALIGNANT, "mdb003": Label.NORMAL,
        "mdb004": Label.NORMAL}
    said = left_out_warning(images, data)
    assert said is not None and "lists 1 image(s) that are not in the folder (mdb005)" in said
    assert f"in {data / 'all-mias'}." in said  # where the others are


def test_one_image_in_two_subfolders_is_refused_naming_both(tmp_path: Path) -> None:
    data = _in_subfolder(tmp_path, "png/all")
    (data / "pgm").mkdir()
    (data / "pgm" / "MDB003.png").write_bytes((data / "png" / "all" / "mdb003.png").read_bytes())
    with pytest.raises(DatasetError, match=r"pgm/MDB003\.png and png/all/mdb003\.png in .* are "
                                           r"each image mdb003: keep one of them"):
        load_dataset(data)


def test_an_image_without_a_row_in_a_subfolder_is_named_with_its_folder(tmp_path: Path) -> None:
    data = _in_subfolder(tmp_path)
    (data / "all-mias" / "masks").mkdir()
    (data / "all-mias" / "masks" / "mdb002_mask.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no truth row for 1 image file\(s\) in the folder "
                                           r"\(all-mias/masks/mdb002_mask.png\)"):
        load_dataset(data)


def test_a_folder_without_any_listed_image_says_how_many_are_listed(tmp_path: Path) -> None:
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n")
    for n in range(1, 5):
        (data / f"mdb{n:03d}.png").unlink()
    (data / "Licence.txt").write_text("the database's licence")
    with pytest.raises(DatasetError, match=r"Info\.txt lists 3 image\(s\), but neither .* nor its "
                                           r"subfolders hold any of their files"):
        load_dataset(data)


def test_rows_calling_one_image_normal_and_abnormal_are_refused(tmp_path: Path) -> None:
    # Taking the abnormal row would guess its label.
    data = _mias(tmp_path / "m", "mdb001 G NORM\nmdb002 G NORM\nmdb003 G NORM\n"
                 "mdb004 G NORM\nmdb002 G CIRC B 50 40 10\n")
    with pytest.raises(DatasetError) as refused:
        load_dataset(data)
    said = str(refused.value)
    assert "Info.txt lines 4 and 7 contradict each other about mdb002" in said
    assert "('mdb002 G NORM', 'mdb002 G CIRC B 50 40 10')" in said


def test_images_beside_info_txt_leave_those_in_subfolders_named(tmp_path: Path) -> None:
    # The subfolders are read only where no image lies beside Info.txt; what they hold is
    # named rather than left out without a word.
    data = _in_subfolder(tmp_path)
    for n in (1, 2):
        (data / "all-mias" / f"mdb{n:03d}.png").rename(data / f"mdb{n:03d}.png")
    images = load_dataset(data)
    assert [i.id for i in images] == ["mdb001", "mdb002"]
    said = left_out_warning(images, data)
    assert said is not None and "lists 3 image(s) that are not in the folder" in said
    assert ("2 such file(s) lie in its subfolders (all-mias/mdb003.png, all-mias/mdb004.png), "
            "which are read only when no image lies beside Info.txt") in said
