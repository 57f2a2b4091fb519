"""Report PDFs print names in Greek, Cyrillic and accented Latin as text, not black boxes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from shared.reports.pdf_parts import BODY, FONT, TITLE, build_pdf, para, table

pytestmark = pytest.mark.skipif(not shutil.which("pdftotext"),
                                reason="poppler-utils (pdftotext) is not installed")

NAMES = ("Nacht <b>24</b> Ωμέγα", "Ключ-7 пациент", "Zoë Ångström-Łukasz")


def test_non_latin_text_is_embedded_and_extractable(tmp_path: Path) -> None:
    assert FONT == "DejaVuSans"  # matplotlib, a report dependency, ships it
    pdf = build_pdf(tmp_path / "u.pdf", "fonts", [
        para(NAMES[0], TITLE), para(NAMES[1], BODY), table(("file", "state"), [(NAMES[2], "ok")])])
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    for name in NAMES:
        assert name in text, (name, text)
    assert "■" not in text
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True,
                           check=True).stdout
    assert "DejaVuSans" in fonts
