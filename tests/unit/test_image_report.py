"""`mammo report image N`: the report of one image, with its heatmap, for an image read alone
(a PNG without a manifest study_id: no exam PDF ever showed it) and for an image of an exam;
a failed image's report gives its reason. The worklist points an image-alone row at that PDF,
and `mammo worklist --write-reports` writes it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from producer.cli.exit_codes import ExitCode
from shared.enums import Laterality
from shared.read_alone import READ_ALONE_FLAG
from shared.reports.exports import DISCLAIMER
from shared.synthetic import make_exam_set, synth_mammogram, write_png
from tests.helpers.cli import invoke_cli

pytestmark = pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdfimages")),
                                reason="poppler-utils (pdftotext, pdfimages) is not installed")


class Run:
    """One `mammo run` of two PNGs of no exam, a truncated PNG and a 4-view DICOM exam."""

    def __init__(self, folder: Path, env: dict[str, str], rows: list[dict[str, object]]):
        self.folder, self.env = folder, env
        self.by_name = {Path(str(r["source"])).name: r for r in rows}

    def id_of(self, name: str) -> int:
        return int(str(self.by_name[name]["image_id"]))

    def mammo(self, args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
        return invoke_cli(args, monkeypatch, self.folder, **self.env)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("image-report")
    night = folder / "night"
    night.mkdir()
    rng = np.random.default_rng(5)
    # The file names stand for what scanners put in paths: no report file may carry them.
    write_png(night / "Doe^Jane left.png", synth_mammogram(rng))
    write_png(night / "Roe^Ann right.png", synth_mammogram(rng, laterality=Laterality.RIGHT,
                                                          lesion=True))
    (night / "broken.png").write_bytes((night / "Doe^Jane left.png").read_bytes()[:300])
    make_exam_set(night / "exam", n_exams=1, seed=6)
    env = {"database_url": f"sqlite:///{folder / 'm.db'}", "model": str(tiny_model_dir),
           "report_dir": str(folder / "reports"), "chunk_size": "4"}
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, out = invoke_cli(["run", str(night), "--format", "json"], monkeypatch, folder,
                               **env)
    assert code == ExitCode.IMAGES_FAILED, out  # the truncated PNG
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    yield Run(folder, env, rows)


def _text(pdf: Path) -> str:
    return " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True,
                                   text=True, check=True).stdout.split())


def _images(pdf: Path) -> int:
    listed = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    return len(listed) - 2  # two header lines


def _written(out: str) -> Path:
    return Path(next(line for line in out.splitlines() if line.endswith((".pdf", ".json"))))


def test_an_image_read_alone_gets_a_pdf_with_its_heatmap_scores_model_and_statement(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    image_id = run.id_of("Roe^Ann right.png")
    # `mammo run` wrote it (only exam PDFs before: nothing showed this image's heatmap).
    assert [p.name for p in (run.folder / "reports" / "exams").glob(f"image-{image_id}.*")] \
        == [f"image-{image_id}.pdf"]
    code, out = run.mammo(["report", "image", str(image_id)], monkeypatch)
    assert code == ExitCode.OK, out
    pdf = _written(out)
    # Beside the exam PDFs, named by the image id, never by the file name.
    assert pdf == run.folder / "reports" / "exams" / f"image-{image_id}.pdf"
    text = _text(pdf)
    row = run.by_name["Roe^Ann right.png"]
    assert DISCLAIMER in text
    assert "Mammography image report" in text and "Read alone" in text
    assert READ_ALONE_FLAG in text
    assert f"model tiny-test-model:{row['model_version'].split(':')[1]}" in text  # type: ignore[union-attr]
    assert str(row["model_sha256"]) in text
    for p in ("p_normal", "p_benign", "p_malignant"):
        assert f"{row[p]:.3f}" in text
    assert f"suspicion {row['suspicion']} / 10; label: {row['label']}" in text
    assert "awaited" not in text and "No exam result" not in text  # no exam wording
    assert "Roe^Ann" not in text and "Roe^Ann" not in pdf.name
    assert _images(pdf) == 1  # the view with its heatmap


def test_an_image_of_an_exam_names_its_exam_and_the_report_that_reads_it_against_the_other(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    row = next(r for r in run.by_name.values() if r["study_uid"])
    code, out = run.mammo(["report", "image", str(row["image_id"]), "-o",
                           str(run.folder / "one.pdf")], monkeypatch)
    assert code == ExitCode.OK, out
    text = _text(run.folder / "one.pdf")
    assert str(row["study_uid"]) in text and "against the other breast" in text
    assert "Read alone" not in text and DISCLAIMER in text
    assert _images(run.folder / "one.pdf") == 1


def test_the_json_report_holds_the_view_its_model_and_flags_without_pixels_or_paths(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    image_id = run.id_of("Doe^Jane left.png")
    code, out = run.mammo(["report", "image", str(image_id), "--format", "json"], monkeypatch)
    assert code == ExitCode.OK, out
    written = _written(out)
    assert written.name == f"image-{image_id}.json"
    report = json.loads(written.read_text(encoding="utf-8"))
    assert set(report) == {"disclaimer", "image_id", "read_alone", "study_uid",
                           "patient_pseudonym", "accession_number", "study_date",
                           "exam_report", "view", "models", "flags"}
    assert report["disclaimer"] == DISCLAIMER and report["image_id"] == image_id
    assert report["read_alone"] is True and report["study_uid"] is None
    assert report["flags"][0] == READ_ALONE_FLAG
    view = report["view"]
    assert view["state"] == "done" and view["heatmap"] is True
    assert set(view["probabilities"]) == {"normal", "benign", "malignant"}
    assert {"suspicion", "label", "model", "input_notes"} <= set(view)
    assert report["models"][0]["name"] == "tiny-test-model"
    assert {"sha256", "preprocessing_version"} <= set(report["models"][0])
    assert "Doe^Jane" not in written.read_text(encoding="utf-8")


def test_a_failed_image_report_gives_its_reason_and_no_heatmap(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    image_id = run.id_of("broken.png")
    code, out = run.mammo(["report", "image", str(image_id)], monkeypatch)
    assert code == ExitCode.OK, out
    pdf = _written(out)
    text = _text(pdf)
    assert "failed, not scored: truncated" in text
    assert "not scored: no probabilities and no heatmap" in text and DISCLAIMER in text
    assert _images(pdf) == 0


@pytest.mark.parametrize(("target", "error"), [
    ("9999", "no image with id 9999; `mammo results`"),
    ("99999999999999", "no image with id 99999999999999"),
    ("abc", "an image is named by its number (image_id), not 'abc'"),
])
def test_an_unknown_image_is_named_exit_2_as_an_unknown_exam(
        target: str, error: str, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run.mammo(["report", "image", target], monkeypatch)
    assert code == ExitCode.USAGE, out
    assert error in out and "Traceback" not in out
    exam_code, _ = run.mammo(["report", "exam", "1.2.3.404"], monkeypatch)
    assert exam_code == code


def test_the_worklist_points_an_image_alone_row_at_its_pdf_and_writes_them(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = run.folder / "reports" / "exams"
    for pdf in reports.glob("image-*"):
        pdf.unlink()
    alone = {run.id_of(n) for n in ("Doe^Jane left.png", "Roe^Ann right.png", "broken.png")}
    code, out = run.mammo(["worklist", "--format", "json"], monkeypatch)
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    assert {r["image_id"] for r in rows if r["study_uid"] is None} == alone
    assert all(r["report_path"] is None for r in rows if r["study_uid"] is None)
    code, out = run.mammo(["worklist", "--write-reports", "--format", "json"], monkeypatch)
    assert code == ExitCode.OK, out
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    paths = {r["image_id"]: r["report_path"] for r in rows if r["study_uid"] is None}
    assert paths == {i: str((reports / f"image-{i}.pdf").resolve()) for i in alone}
    assert all(Path(p).is_file() for p in paths.values())
    assert all(r["report_path"] for r in rows if r["study_uid"])  # exams as before


def test_mammo_run_writes_the_pdf_of_each_image_it_read_alone_and_keeps_current_ones(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A MIAS-style night (images of no exam) left 0 PDFs: the worklist's rows for them had
    # no report_path until someone ran `mammo worklist --write-reports`.
    night = tmp_path / "night"
    night.mkdir()
    rng = np.random.default_rng(7)
    write_png(night / "a.png", synth_mammogram(rng))
    write_png(night / "b.png", synth_mammogram(rng, laterality=Laterality.RIGHT, lesion=True))
    (night / "cut.png").write_bytes((night / "a.png").read_bytes()[:300])
    env = {"database_url": f"sqlite:///{tmp_path / 'm.db'}", "model": str(tiny_model_dir),
           "report_dir": str(tmp_path / "reports")}
    code, out = invoke_cli(["run", str(night), "--format", "json"], monkeypatch, tmp_path,
                           **env)
    assert code == ExitCode.IMAGES_FAILED, out
    states = {int(r["image_id"]): r["state"]
              for r in json.loads(out[out.index("["):out.rindex("]") + 1])}
    ids = sorted(states)
    pdfs = [tmp_path / "reports" / "exams" / f"image-{i}.pdf" for i in ids]
    assert all(pdf.is_file() for pdf in pdfs)
    assert "3 image PDF(s) in " in " ".join(out.split()) and "exam PDF(s)" not in out
    failed = [pdf for i, pdf in zip(ids, pdfs, strict=True) if states[i] == "failed"]
    assert len(failed) == 1 and "failed, not scored" in _text(failed[0])
    code, listed = invoke_cli(["worklist", "--format", "json"], monkeypatch, tmp_path, **env)
    rows = json.loads(listed[listed.index("["):listed.rindex("]") + 1])
    assert {r["image_id"]: r["report_path"] for r in rows} == {
        i: str(pdf.resolve()) for i, pdf in zip(ids, pdfs, strict=True)}
    # Run again: every file a copy, every PDF current, none written again.
    written = [pdf.stat().st_mtime_ns for pdf in pdfs]
    code, out = invoke_cli(["run", str(night)], monkeypatch, tmp_path, **env)
    assert [pdf.stat().st_mtime_ns for pdf in pdfs] == written
