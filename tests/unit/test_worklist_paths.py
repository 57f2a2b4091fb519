"""Each exam's default PDF is its own file, whatever characters its study ID holds."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from shared.reports.worklist import exam_pdf_path

ROOT = Path("reports")


def test_a_dicom_uid_is_the_file_name_as_it_is() -> None:
    assert exam_pdf_path(ROOT, "1.2.826.0.1.3680043.8.498.1003") == (
        ROOT / "exams" / "exam-1.2.826.0.1.3680043.8.498.1003.pdf")


def test_ids_that_sanitise_alike_get_different_files() -> None:
    # "study A" and "study_A" both become "study_A"; non-Latin IDs become underscores.
    ids = ["manifest:study A", "manifest:study_A", "manifest:Ωμέγα 患者", "manifest:Ωμέγα 病人"]
    paths = [exam_pdf_path(ROOT, uid) for uid in ids]
    assert len(set(paths)) == len(ids)
    assert all(p.parent == ROOT / "exams" and p.suffix == ".pdf" for p in paths)


@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=200))
def test_two_different_ids_never_share_a_file(first: str, second: str) -> None:
    if first != second:
        assert exam_pdf_path(ROOT, first) != exam_pdf_path(ROOT, second)
    name = exam_pdf_path(ROOT, first).name
    assert "/" not in name and len(name) < 120
