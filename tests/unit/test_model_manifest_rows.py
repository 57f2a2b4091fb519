"""The CSV manifest layout: a byte-order mark, empty paths, bad laterality or view, missing
files, equal stems; columns that would be ignored, encodings, quotes and separators refused as
`mammo submit --manifest` refuses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.bilateral import pair_keys
from models.datasets import load_dataset
from shared.enums import Label, Laterality
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


@pytest.mark.parametrize(("header", "said"), [
    # A misspelt optional column would turn its values off without a word (no pairs read).
    ("path,label,lateralty", "the column 'lateralty' is not a manifest column (did you mean "
                             "'laterality'?)"),
    ("path,label,laterality,laterality", "the column 'laterality' is in the header row twice"),
])
def test_a_column_that_would_be_ignored_is_refused(tmp_path: Path, header: str,
                                                   said: str) -> None:
    manifest = _write(tmp_path / "set.csv", f"{header}\na.png,normal,L\n")
    with pytest.raises(DatasetError, match=said.replace("(", r"\(").replace("?)", r"\?\)")):
        load_dataset(manifest)


def test_the_columns_of_a_submit_manifest_are_allowed(tmp_path: Path) -> None:
    # The manifest of `mammo submit --manifest`, with its label column, evaluates as it is.
    manifest = _write(tmp_path / "set.csv", "path,patient_id,laterality,view,study_id,"
                      "accession,study_date,label,pixel_spacing_mm\n"
                      "a.png,P1,L,CC,S1,A1,20240131,benign,0.1\n")
    [image] = load_dataset(manifest)
    assert (image.label, image.patient_id, image.view) == (Label.BENIGN, "P1", "CC")


def test_views_are_read_in_any_case_so_the_two_breasts_pair(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "set.csv", "path,label,patient_id,laterality,view\n"
                      "r.png,normal,p9,R,MLO\nl.png,benign,p9,left,mlo\n")
    images = load_dataset(manifest)
    assert [(i.laterality, i.view) for i in images] == [(Laterality.LEFT, "MLO"),
                                                        (Laterality.RIGHT, "MLO")]
    assert pair_keys(images)[0][::2] == pair_keys(images)[1][::2]  # one patient, one view


@pytest.mark.parametrize("view", ["MOL", "oblique"])
def test_a_view_no_dicom_names_is_refused(tmp_path: Path, view: str) -> None:
    manifest = _write(tmp_path / "set.csv", f"path,label,view\na.png,normal,{view}\n")
    with pytest.raises(DatasetError, match=f"set.csv line 2: view '{view}' is not one of CC, "):
        load_dataset(manifest)


def test_a_manifest_saved_as_windows_1252_is_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    # Excel's "CSV (comma delimited)": refused with what to do, never a traceback.
    manifest = _write(tmp_path / "set.csv", "path,label,patient_id\na.png,normal,Müller\n",
                      encoding="cp1252")
    with pytest.raises(DatasetError, match=r"set.csv is not UTF-8 text .* save it as UTF-8 "
                                           r"\(in Excel, 'CSV UTF-8 \(comma delimited\)'\)"):
        load_dataset(manifest)


def test_an_unclosed_quote_is_named_as_such(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "set.csv", 'path,label\na.png,normal\nb.png,"benign\n')
    with pytest.raises(DatasetError, match=r"line 3: not valid CSV .* a double quote opened on "
                                           r"this line is not closed"):
        load_dataset(manifest)


def test_rows_of_empty_values_are_blank_lines(tmp_path: Path) -> None:
    # What a spreadsheet exports for a formatted blank row; line numbers stay the file's.
    manifest = _write(tmp_path / "set.csv", "path,label\na.png,normal\n,\n\n ,  \nb.png,cancer\n")
    with pytest.raises(DatasetError, match=r"set\.csv line 6: label 'cancer'"):
        load_dataset(manifest)
    (tmp_path / "set.csv").write_text("path,label\na.png,normal\n,\n")
    assert [i.id for i in load_dataset(manifest)] == ["a"]


@pytest.mark.parametrize(("mark", "said"), [(";", "';'"), ("\t", "tabs")])
def test_another_separator_is_named(tmp_path: Path, mark: str, said: str) -> None:
    manifest = tmp_path / "set.csv"
    manifest.write_text(f"path{mark}label\na.png{mark}normal\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=f"needs the columns path,label .*separated by {said}"
                                           ": save it as CSV with commas"):
        load_dataset(manifest)
