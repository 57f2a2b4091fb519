"""CSV manifests and the filename convention: metadata for files that carry none."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.manifest import (
    FileMetadata,
    Manifest,
    apply_metadata,
    filename_convention,
    manifest_study_uid,
    metadata_source,
)
from shared.enums import Label, Laterality, View
from shared.errors import ManifestError
from shared.imaging.types import ImageHeader
from shared.pseudonym import Pseudonymizer

KEY = Pseudonymizer(b"unit-test-key-not-a-secret")


def _manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_found_by_resolved_path_and_ids_pseudonymised(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    path = _manifest(tmp_path, (
        "path,patient_id,laterality,view,study_id,accession,label,pixel_spacing_mm\n"
        "scans/a.png,P-0001,L,CC,EX1,ACC1,malignant,0.1\n"
        f"{tmp_path / 'scans' / 'b.png'},,right,mlo,,,,0.07\\0.08\n"))
    manifest = Manifest.load(path, pseudonymize=KEY)
    a = manifest.lookup(tmp_path / "scans" / ".." / "scans" / "a.png")
    assert a == FileMetadata(Laterality.LEFT, View.CC, KEY("P-0001"), "EX1", "ACC1",
                             Label.MALIGNANT, (0.1, 0.1))
    b = manifest.lookup(tmp_path / "scans" / "b.png")
    assert b is not None and (b.laterality, b.view) == (Laterality.RIGHT, View.MLO)
    assert b.patient_pseudonym is None and b.pixel_spacing_mm == (0.07, 0.08)
    assert manifest.lookup(tmp_path / "scans" / "c.png") is None
    assert "P-0001" not in repr(manifest.entries)


@pytest.mark.parametrize("text, phrase", [
    ("file,laterality\nx.png,L\n", "no 'path' column"),
    ("path,laterality\nx.png,sideways\n",
     r"'sid...' \(8 characters, shown in part\) is not a valid laterality"),
    ("path,label\nx.png,cancer\n",
     r"line 2: 'can...' \(6 characters, shown in part\) is not a valid label"),
    ("path,pixel_spacing_mm\nx.png,-1\n", "not a valid pixel_spacing_mm"),
    ("path,view\n,CC\n", "'path' value is empty"),
    ("path,pixel_spacing_mm\nx.png,nan\n", "'nan' is not a valid pixel_spacing_mm"),
    ("path,pixel_spacing_mm\nx.png,0.1 inf\n", "not a valid pixel_spacing_mm"),
    ("path,view\nx.png,CC\ny.png,MLO,0.1\n", "line 3: 1 more value"),
    ("path,view\nx\x00y.png,CC\n", "not a usable file path"),
    # A view no DICOM View Position names was stored as OTHER without a word.
    ("path,laterality,view\nx.png,L,ZZVIEW\n",
     r"line 2: 'ZZV...' \(6 characters, shown in part\) is not a valid view "
     r"\(accepted: CC, MLO, ML, LM, LMO, XCCL"),
    ("path,laterality\nx.png,X\n", r"'X' is not a valid laterality \(accepted: L, R or B"),
    # Columns that are none of the manifest's: their values were dropped without a word.
    ("path,lateralty\nx.png,L\n", "column 'lateralty' is not a manifest column "
                                    r"\(did you mean 'laterality'\?\)"),
    ("path,patient_id,bogus\nx.png,,1\n", r"'bogus' is not a manifest column, and its"),
    ("path,view,View\nx.png,CC,MLO\n", "column 'view' is in the header row twice"),
    ("path,view,\nx.png,CC,MLO\n", "column 3 has values but no name"),
    # An unclosed quote swallowed the rest of the file into one value.
    ('path,patient_id,laterality\nimg_LCC.png,"ZZMPID8,L\n', "line 2: not valid CSV"),
    ('path,patient_id,laterality,study_id\na.png,"P1,L\nb.png,P2",R,E1\n',
     "line 2: a double quote opened on this line is closed only on line 3"),
    ("path,patient_id\nx.png,P1\n", "line 2: a patient_id without study_id, accession or "
                                     "study_date"),
    ("path,study_date\nx.png,20241301\n",
     r"'202...' \(8 characters, shown in part\) is not a valid study_date"),
    # Two rows for one file that disagree: which one was kept depended on their order.
    ("path,patient_id,laterality,study_id\nx.png,P1,L,E1\n./x.png,P2,L,E1\n",
     "line 3: './x.png' names the same file as line 2 with another patient_id: keep one"),
])
def test_bad_manifests_say_where_and_what(tmp_path: Path, text: str, phrase: str) -> None:
    with pytest.raises(ManifestError, match=phrase):
        Manifest.load(_manifest(tmp_path, text), pseudonymize=KEY)


def test_messages_never_quote_a_patient_id(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,patient_id,study_id\nx.png,SECRET-1,E\nx.png,SECRET-2,E\n")
    with pytest.raises(ManifestError, match="another patient_id") as caught:
        Manifest.load(path, pseudonymize=KEY)
    assert "SECRET" not in str(caught.value)


def test_harmless_repeats_and_empty_columns_are_read(tmp_path: Path) -> None:
    """What spreadsheets write is read: a row given twice alike, a nameless empty column
    after a stray cell, blank lines; OTHER and dates with dashes as written."""
    path = _manifest(tmp_path, (
        "path,view,laterality,study_date,,\n\n"
        "a.png,other,L,2024-01-31,,\n"
        "a.png,OTHER,left,20240131,,\n\n"
        "b.png,XCCL,R,,,\n"))
    manifest = Manifest.load(path, pseudonymize=KEY)
    a, b = manifest.lookup(tmp_path / "a.png"), manifest.lookup(tmp_path / "b.png")
    assert a == FileMetadata(Laterality.LEFT, View.OTHER, study_date="20240131")
    assert b is not None and b.view is View.XCCL


def test_rows_no_file_looked_up_are_named_in_a_warning(tmp_path: Path) -> None:
    path = _manifest(tmp_path, (
        "path,view\n"
        "a.png,CC\n../../etc/passwd,CC\n/etc/hostname,MLO\nb.png,CC\nc.png,CC\n"))
    manifest = Manifest.load(path, pseudonymize=None)
    assert manifest.lookup(tmp_path / "a.png") is not None
    warning = manifest.unmatched_warning()
    assert warning is not None and warning.startswith(f"4 row(s) of the manifest {path}")
    assert "line 3 '../../etc/passwd', line 4 '/etc/hostname', line 5 'b.png', ..." in warning
    for name in ("b.png", "c.png", "../../etc/passwd", "/etc/hostname"):
        manifest.lookup(tmp_path / name)
    assert manifest.unmatched_warning() is None


def test_patient_ids_without_a_key_refuse_the_manifest(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,patient_id\nx.png,SECRET-77\n")
    with pytest.raises(ManifestError) as caught:
        Manifest.load(path, pseudonymize=None)
    assert "MAMMO_PATIENT_ID_KEY" in str(caught.value) and "SECRET-77" not in str(caught.value)
    # Without patient IDs no key is needed.
    Manifest.load(_manifest(tmp_path, "path,laterality\nx.png,L\n"), pseudonymize=None)


@pytest.mark.parametrize("name, laterality", [
    ("mdb001.png", Laterality.RIGHT), ("mdb002.png", Laterality.LEFT),
    ("MDB322.PGM", Laterality.LEFT), ("mdb1.png", None), ("scan002.png", None),
])
def test_mini_mias_filename_convention(name: str, laterality: Laterality | None) -> None:
    found = filename_convention(Path("/data") / name)
    if laterality is None:
        assert found is None
        return
    assert found is not None and found.laterality is laterality and found.view is View.MLO
    assert found.pixel_spacing_mm == (0.2, 0.2)


def test_manifest_row_wins_over_convention_and_header_wins_over_both(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,laterality,view,study_id\nmdb001.png,L,CC,EX9\n")
    lookup = metadata_source(Manifest.load(path, pseudonymize=None))
    assert lookup(tmp_path / "mdb001.png") is not None
    assert lookup(tmp_path / "mdb001.png").laterality is Laterality.LEFT  # type: ignore[union-attr]
    assert lookup(tmp_path / "mdb003.png").laterality is Laterality.RIGHT  # type: ignore[union-attr]
    assert metadata_source(None)(tmp_path / "x.png") is None

    png = ImageHeader(format="png", identity="sha256:00")
    filled = apply_metadata(png, lookup(tmp_path / "mdb001.png"))
    assert (filled.laterality, filled.view) == (Laterality.LEFT, View.CC)
    assert filled.study_instance_uid == "manifest:EX9"
    dicom = ImageHeader(format="dicom", identity="sop:1", laterality=Laterality.RIGHT,
                        view=View.MLO, study_instance_uid="1.2.3")
    kept = apply_metadata(dicom, lookup(tmp_path / "mdb001.png"))
    assert (kept.laterality, kept.view, kept.study_instance_uid) == (
        Laterality.RIGHT, View.MLO, "1.2.3")


_CELLS = st.one_of(
    st.sampled_from(["path", "view", "laterality", "label", "pixel_spacing_mm", "patient_id",
                     "x.png", "L", "CC", "nan", "-0", "1e999", "0.1\\0.1", "malignant", ""]),
    st.text(max_size=8))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_CELLS, max_size=5), max_size=5),
       st.sampled_from([",", ";", "\t"]), st.sampled_from(["\n", "\r\n", "\r"]))
def test_any_csv_is_read_or_refused_with_a_reason(tmp_path: Path, cells: list[list[str]],
                                                  comma: str, newline: str) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(newline.join(comma.join(row) for row in cells)
                     .encode("utf-8", "surrogatepass"))
    try:
        manifest = Manifest.load(path, pseudonymize=KEY)
    except ManifestError as exc:
        assert str(path) in str(exc)
        return
    for metadata in manifest.entries.values():
        spacing = metadata.pixel_spacing_mm
        assert spacing is None or all(0 < v < float("inf") for v in spacing)


def test_long_study_ids_stay_distinct_exams_within_a_uid_length() -> None:
    first, second = "S" * 70 + "-left-visit", "S" * 70 + "-right-visit"
    uids = {manifest_study_uid(first), manifest_study_uid(second)}
    assert len(uids) == 2 and all(len(uid) <= 64 for uid in uids)
    assert all(uid.startswith("manifest:SSSS") for uid in uids)
    assert manifest_study_uid("EX9") == "manifest:EX9"


def test_a_manifest_exam_key_holds_its_patient() -> None:
    """Two patients' rows with one study ID (a reused exam number) are two exams."""
    png = ImageHeader(format="png", identity="sha256:00")
    keys = [apply_metadata(png, FileMetadata(study_id="EXAM-0001", patient_pseudonym=p))
            .study_instance_uid for p in ("p-aaa", "p-bbb", "p-aaa", None)]
    assert keys == ["manifest:p-aaa:EXAM-0001", "manifest:p-bbb:EXAM-0001",
                    "manifest:p-aaa:EXAM-0001", "manifest:EXAM-0001"]
    # A DICOM header's patient is the one the key holds.
    dicom = ImageHeader(format="dicom", identity="sop:1", patient_pseudonym="p-ccc")
    assert apply_metadata(dicom, FileMetadata(study_id="E", patient_pseudonym="p-aaa")) \
        .study_instance_uid == "manifest:p-ccc:E"


def test_spreadsheet_blank_rows_and_trailing_commas_are_read(tmp_path: Path) -> None:
    """Excel writes a formatted empty row as ",,,," and may end rows with empty cells."""
    path = _manifest(tmp_path, "path,view\na.png,CC,\n,,\n,\nb.png,MLO,,\n")
    manifest = Manifest.load(path, pseudonymize=KEY)
    a, b = manifest.lookup(tmp_path / "a.png"), manifest.lookup(tmp_path / "b.png")
    assert a is not None and a.view is View.CC and b is not None and b.view is View.MLO


@pytest.mark.parametrize("content, phrase", [
    (b"path;view\na.png;CC\n", "separated by ';': save it as CSV with commas"),
    ("path,view\ncaf\u00e9.png,CC\n".encode("cp1252"), "is not UTF-8 text .*save it as UTF-8"),
])
def test_excel_saves_in_another_format_are_told_how_to_save(
        tmp_path: Path, content: bytes, phrase: str) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=phrase):
        Manifest.load(path, pseudonymize=KEY)
