"""`mammo run` leaves reports a person can open, and `mammo report` writes any of them.

One real run (subprocess, embedded queue, real model files) over synthetic exams: one exam
carries a known patient name and ID, one file is truncated. Every report is then rendered
(pdftoppm), read back (pdftotext, html.parser) and searched for patient data.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shared.reports.exports import DISCLAIMER
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.dicom_edit import rewrite_dicom
from tests.helpers.processes import mammo_env, run_mammo

PATIENT_NAME, PATIENT_ID, BIRTH = "Zebedee^Quilliam", "PID-5550-RPT", "19490707"
PHI = ("Zebedee", "Quilliam", PATIENT_ID, BIRTH)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(not shutil.which("pdftoppm") or not shutil.which("pdftotext"),
                                reason="poppler-utils (pdftoppm, pdftotext) is not installed")


def pdf_text(path: Path) -> str:
    done = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True)
    return " ".join(done.stdout.split())


def render_first_page(path: Path, out: Path) -> Path:
    subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", str(path),
                    str(out)], check=True, capture_output=True)
    [png] = out.parent.glob(f"{out.name}*.png")
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 2000
    return png


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values.get("src") or "")
        for key in ("href", "src"):
            if tag != "img" and values.get(key):
                self.links.append(values[key] or "")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("reports-run")
    folder = root / "exams"
    files = make_exam_set(folder, n_exams=2, seed=11)
    for path in files[4:]:  # the second exam belongs to an identified patient
        rewrite_dicom(path, PatientName=PATIENT_NAME, PatientID=PATIENT_ID,
                      PatientBirthDate=BIRTH)
    write_truncated_copy(files[0], folder / "broken.dcm")
    env = mammo_env(database_url=f"sqlite:///{root / 'm.db'}", model=str(tiny_model_dir),
                    patient_id_key="reports-test-key-not-secret", exam_timeout_s="3600")
    done = run_mammo(["run", str(folder), "--format", "json"], env, root)
    assert done.returncode == 3, done.stderr  # ran; the truncated file failed
    (root / "run.log").write_text(done.stdout + done.stderr)
    return root


def _env(run_dir: Path, tiny_model_dir: Path) -> dict[str, str]:
    return mammo_env(database_url=f"sqlite:///{run_dir / 'm.db'}", model=str(tiny_model_dir),
                     patient_id_key="reports-test-key-not-secret")


def test_run_writes_summary_html_and_an_exam_pdf_per_exam(run_dir: Path) -> None:
    reports = run_dir / "reports"
    assert (reports / "batch-1-summary.html").is_file()
    assert {p.suffix for p in reports.iterdir() if p.is_file()} == {".html", ".csv", ".json"}
    pdfs = sorted((reports / "exams").glob("*.pdf"))
    assert len(pdfs) == 2
    for pdf in pdfs:
        render_first_page(pdf, run_dir / f"page-{pdf.stem[-6:]}")


def test_report_batch_exports_refresh_the_files_the_run_wrote(run_dir: Path,
                                                               tiny_model_dir: Path) -> None:
    """`mammo report batch N --format csv|json` writes the run's batch-N.csv/.json again,
    not a second file beside a stale one."""
    reports = run_dir / "reports"
    names = sorted(p.name for p in reports.iterdir())
    for fmt in ("csv", "json"):
        export = reports / f"batch-1.{fmt}"
        before = export.read_text(encoding="utf-8")
        export.unlink()
        done = run_mammo(["report", "batch", "1", "--format", fmt],
                         _env(run_dir, tiny_model_dir), run_dir)
        assert done.returncode == 0, done.stderr
        assert export.is_file(), done.stderr
        if fmt == "csv":
            assert export.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in reports.iterdir()) == names


def test_exam_pdf_holds_the_key_fields_and_the_disclaimer(run_dir: Path,
                                                          tiny_model_dir: Path) -> None:
    env = _env(run_dir, tiny_model_dir)
    listed = run_mammo(["worklist", "--format", "json"], env, run_dir)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 2 and all(Path(r["report_path"]).is_file() for r in rows)
    meta = json.loads((tiny_model_dir / "metadata.json").read_text())
    for row in rows:
        text = pdf_text(Path(row["report_path"]))
        assert " ".join(DISCLAIMER.split()) in text
        assert row["study_uid"] in text and "SYN00000000" in text  # accession
        for view in ("L-CC", "R-CC", "L-MLO", "R-MLO"):
            assert view in text
        assert meta["sha256"] in text and meta["version"] in text
        assert "Processing times" in text and "normal benign malignant" in text
        # Synthetic exams say so on the report itself, not only in their DICOM headers.
        assert "SYNTHETIC - NOT A REAL PATIENT: these images were generated" in " ".join(
            text.split())
        assert re.search(r"suspicion \d+ / 10", text)
        # The tiny model has a bilateral head: the exam's breasts were read side by side.
        assert row["per_breast"]["L"]["bilateral"] and row["per_breast"]["R"]["bilateral"]
        assert "read against the other breast's same view" in " ".join(text.split())
    identified = next(r for r in rows if r["patient_pseudonym"])
    assert identified["patient_pseudonym"] in pdf_text(Path(identified["report_path"]))
    # The exam with the failed view (the other may carry flags too, e.g. "read both" where
    # the tiny model's bilateral head lowered a breast), its PDF giving the reason.
    flagged = next(r for r in rows if any("failed" in f for f in r["flags"]))
    assert "truncated" in pdf_text(Path(flagged["report_path"]))


def test_batch_html_is_self_contained_with_embedded_charts(run_dir: Path) -> None:
    page = (run_dir / "reports" / "batch-1-summary.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    charts = [s for s in parser.sources if s.startswith("data:image/png;base64,")]
    assert len(charts) == len(parser.sources) == 4
    for src in charts:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert parser.links == []  # nothing to fetch: it opens offline
    for heading in ("Counts by state", "Throughput", "Failures (1)", "Read first"):
        assert heading in page
    assert "truncated" in page and DISCLAIMER in page
    # Generated exams are labelled on the batch summary too, not only in each exam's PDF.
    assert "SYNTHETIC TEST DATA, not patients" in page
    assert "synthetic images (generated test data, not patients)" in page


@pytest.mark.parametrize(("kind", "fmt"), [("batch", "pdf"), ("batch", "html"),
                                           ("batch", "csv"), ("batch", "json"),
                                           ("exam", "pdf"), ("exam", "json"),
                                           ("worklist", "csv"), ("worklist", "json"),
                                           ("stats", "csv"), ("stats", "json")])
def test_report_writes_every_kind_to_the_chosen_path(
        run_dir: Path, tiny_model_dir: Path, kind: str, fmt: str) -> None:
    env = _env(run_dir, tiny_model_dir)
    target = {"batch": ["1"], "worklist": ["1"], "stats": []}.get(kind)
    if target is None:
        rows = json.loads(run_mammo(["worklist", "--format", "json"], env, run_dir).stdout)
        target = [rows[0]["study_uid"]]
    out = run_dir / "chosen" / f"{kind}.{fmt}"
    done = run_mammo(["report", kind, *target, "--format", fmt, "-o", str(out)], env, run_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and out.stat().st_size > 100
    if fmt == "pdf":
        render_first_page(out, run_dir / f"chosen-{kind}")
        assert " ".join(DISCLAIMER.split()) in pdf_text(out)
    elif fmt == "json":
        data = json.loads(out.read_text())
        if kind == "batch":
            assert data["models"] == ["tiny-test-model:0.0.1"]
    if kind == "batch" and fmt in ("pdf", "html"):  # every report names its model
        text = pdf_text(out) if fmt == "pdf" else out.read_text(encoding="utf-8")
        assert "tiny-test-model:0.0.1" in text


def test_wrong_format_for_a_kind_is_a_usage_error(run_dir: Path, tiny_model_dir: Path) -> None:
    done = run_mammo(["report", "stats", "--format", "pdf"], _env(run_dir, tiny_model_dir),
                     run_dir)
    assert done.returncode == 2 and "csv|json" in done.stderr


def test_no_patient_name_or_id_in_any_report(run_dir: Path, tiny_model_dir: Path) -> None:
    env = _env(run_dir, tiny_model_dir)
    extra = run_dir / "phi-check"
    for args in (["report", "batch", "1", "--format", "pdf", "-o", str(extra / "b.pdf")],
                 ["report", "stats", "--format", "json", "-o", str(extra / "s.json")]):
        assert run_mammo(args, env, run_dir).returncode == 0
    texts = {"run output": (run_dir / "run.log").read_text()}
    for path in [*run_dir.joinpath("reports").rglob("*"), *extra.rglob("*")]:
        if path.is_file():
            texts[str(path)] = pdf_text(path) if path.suffix == ".pdf" else path.read_text()
            texts[f"{path} (bytes)"] = path.read_bytes().decode("latin-1")
    for command in (["worklist", "--format", "json"], ["results", "--format", "csv"],
                    ["stats", "--format", "json"]):
        texts[" ".join(command)] = run_mammo(command, env, run_dir).stdout
    assert len(texts) > 10
    for where, text in texts.items():
        for secret in PHI:
            assert secret not in text, f"{secret!r} leaked into {where}"


def test_an_unreadable_source_says_image_not_available(run_dir: Path,
                                                       tiny_model_dir: Path) -> None:
    env = _env(run_dir, tiny_model_dir)
    rows = json.loads(run_mammo(["worklist", "--format", "json"], env, run_dir).stdout)
    moved = run_dir / "moved"
    shutil.copytree(run_dir / "exams", moved, dirs_exist_ok=True)
    for dcm in (run_dir / "exams").glob("*.dcm"):
        dcm.unlink()
    try:
        out = run_dir / "gone.pdf"
        done = run_mammo(["report", "exam", rows[0]["study_uid"], "-o", str(out)], env, run_dir)
        assert done.returncode == 0, done.stderr
        text = pdf_text(out)
        assert "image not available" in text and "heatmap only" in text
    finally:
        shutil.copytree(moved, run_dir / "exams", dirs_exist_ok=True)
