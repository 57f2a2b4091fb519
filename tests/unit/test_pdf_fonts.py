"""Report PDFs print text of any script readably, never as black boxes or blanks: Greek,
Cyrillic and accented Latin in DejaVu Sans; Chinese, Japanese and Korean in reportlab's CID
fonts (``ACC-王小明`` printed ``ACC-□□□``); Arabic and Hebrew right to left with Arabic letters
joined (``رقم-123`` printed backwards, ``مقر``); control characters as ``\\x1b``, as the
tables and CSV files show them (ESC printed as a blank); a character no font holds as its
code. Each asserted through the PDF's text layer (pdftotext) and its fonts (pdffonts)."""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.reports.batch_data import BatchSummary, FailureReason
from shared.reports.batch_pdf import write_summary_pdf
from shared.reports.exam_data import ExamReport
from shared.reports.exam_pdf import write_exam_pdf
from shared.reports.pdf_parts import BODY, FONT, TITLE, build_pdf, para, table
from shared.reports.pdf_text import CJK_FONTS

pytestmark = pytest.mark.skipif(not shutil.which("pdftotext"),
                                reason="poppler-utils (pdftotext) is not installed")

NAMES = ("Nacht <b>24</b> Ωμέγα", "Ключ-7 пациент", "Zoë Ångström-Łukasz")
CJK = ("ACC-王小明", "ｱｶｻ山", "ACC-Ζωή-ß-日本", "山田花子_LMLO.dcm", "ヤマダ^タロウ=山田^太郎",
       "김민지 환자")
# Marks poppler puts around a right-to-left run it gives back in reading order.
_BIDI_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"))


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def _fonts(pdf: Path) -> str:
    return subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True,
                          check=True).stdout


def _plain(text: str) -> str:
    """The text layer without poppler's direction marks, Arabic presentation forms (the
    joined letters) as the letters they are."""
    return unicodedata.normalize("NFKC", text.translate(_BIDI_MARKS))


def test_non_latin_text_is_embedded_and_extractable(tmp_path: Path) -> None:
    assert FONT == "DejaVuSans"  # matplotlib, a report dependency, ships it
    pdf = build_pdf(tmp_path / "u.pdf", "fonts", [
        para(NAMES[0], TITLE), para(NAMES[1], BODY), table(("file", "state"), [(NAMES[2], "ok")])])
    text = _text(pdf)
    for name in NAMES:
        assert name in text, (name, text)
    assert "■" not in text
    assert "DejaVuSans" in _fonts(pdf)


def test_chinese_japanese_and_korean_print_as_themselves_in_a_cid_font(tmp_path: Path) -> None:
    pdf = build_pdf(tmp_path / "cjk.pdf", "cjk", [
        para(CJK[0], TITLE), *(para(v) for v in CJK[1:]),
        table(("file", "state"), [(v, "ok") for v in CJK])])
    text = _text(pdf)
    for value in CJK:
        assert text.count(value) == 2, (value, text)  # the paragraph and the table cell
    fonts = _fonts(pdf)
    # Han beside kana in the Japanese font, alone in the Chinese one, hangul in the Korean.
    for name in CJK_FONTS.values():
        assert name in fonts, fonts
    assert "DejaVuSans" in fonts


def test_arabic_and_hebrew_are_drawn_right_to_left_with_arabic_letters_joined(
        tmp_path: Path) -> None:
    values = ("رقم-123", "מספר-5", "قباني^لنزار")
    pdf = build_pdf(tmp_path / "rtl.pdf", "rtl", [
        *(para(v) for v in values), para(f"accession {values[0]} in a sentence", TITLE),
        table(("accession", "state"), [(v, "ok") for v in values])])
    text = _text(pdf)
    plain = "".join(_plain(text).split())  # poppler moves a space beside a run it turns
    # Drawn in display order, the digits at the left; poppler gives each right-to-left run
    # back in reading order. Drawn as stored (left to right) it read "مقر-123", "רפסמ-5".
    for shown in ("123-رقم", "5-מספר", "قباني^لنزار", "accession123-رقمinasentence"):
        assert shown in plain, (shown, text)
    assert "مقر" not in plain and "רפסמ" not in plain
    # Arabic letters in their joined forms (presentation forms), none left apart.
    arabic = [c for c in text if "\u0600" <= c <= "\u06ff" or "\ufb50" <= c <= "\ufeff"]
    assert arabic and all(c >= "\ufb50" for c in arabic), text


def test_control_characters_show_escaped_and_a_character_no_font_holds_as_its_code(
        tmp_path: Path) -> None:
    pdf = build_pdf(tmp_path / "c.pdf", "control", [
        para("AC\x1b[31mC\x07 end"), table(("accession",), [("X\x1b]0;title\x07",)]),
        para("मरीज़ 7"), para("ok \U0001f600")])
    text = _text(pdf)
    # As `mammo results` and the CSV files show them (shared.formatting.without_control).
    assert "AC\\x1b[31mC\\x07 end" in text and "X\\x1b]0;title\\x07" in text
    assert "\\u092e\\u0930\\u0940\\u091c\\u093c 7" in text  # Devanagari: DejaVu Sans has none
    assert "ok \\U0001f600" in text


def test_the_exam_pdf_shows_an_impossible_study_date_as_given_and_says_so(
        tmp_path: Path) -> None:
    def identification(study_date: str) -> str:
        report = ExamReport("1.2.3.4", "p-1", "ACC-王小明\x1b", study_date, None, [])
        return " ".join(_text(write_exam_pdf(report, tmp_path / f"{study_date}.pdf",
                                             max_pixels=1)).split())

    text = identification("20230230")
    assert "study date 20230230 (not a valid date)" in text
    assert "2023-02-30" not in text
    assert "accession number ACC-王小明\\x1b" in text
    assert "study date 2024-02-29" in identification("20240229")


def test_the_batch_pdf_prints_file_names_of_any_script(tmp_path: Path) -> None:
    files = ("山田花子_LMLO.dcm", "قباني_LMLO.dcm", "김민지\x1b.png")
    summary = BatchSummary(
        batch_id=1, name="夜間", created_at=datetime(2026, 11, 24, tzinfo=UTC),
        finished_at=datetime(2026, 11, 25, tzinfo=UTC), by_state={"failed": len(files)},
        by_class={}, suspicion_counts={}, per_day={}, images_per_minute=None, stage_times=[],
        failures=[{"image_id": i, "file": f, "error_code": "decode_error",
                   "error_message": f"cannot read {f}"} for i, f in enumerate(files)],
        failure_reasons=[FailureReason("decode_error", len(files), f"cannot read {files[0]}")],
        worklist=[], exams=0, duplicates=0, synthetic_images=0, results=[])
    pdf = write_summary_pdf(summary, tmp_path / "batch.pdf")
    plain = _plain(_text(pdf))
    assert "Batch 1 (夜間)" in plain
    for shown in ("山田花子_LMLO.dcm", "김민지\\x1b.png"):
        assert shown in plain, (shown, plain)
    # The Arabic name drawn right to left (poppler gives it back in reading order, where it
    # puts the "_" beside it is its own), not backwards.
    assert plain.count("قباني") == 2 and "ينابق" not in plain, plain
    fonts = _fonts(pdf)
    assert CJK_FONTS["zh"] in fonts and CJK_FONTS["ko"] in fonts
