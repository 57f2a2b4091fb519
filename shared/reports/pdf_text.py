"""Text in the report PDFs, whatever its script: every value an exam, image or batch PDF
shows becomes paragraph markup here (``markup``, through ``pdf_parts.para``), nowhere else.

- Fonts: DejaVu Sans (shipped with matplotlib) for Latin, Greek, Cyrillic, Arabic and
  Hebrew, embedded as a subset; for the Chinese, Japanese and Korean characters it lacks,
  one of reportlab's built-in CID fonts per run of them (no font file: a PDF viewer draws
  them with its own CJK font, as Acrobat, browsers, macOS and Windows have).
- Right-to-left text (Arabic, Hebrew) is reordered for display (python-bidi, the Unicode
  Bidirectional Algorithm, in a left-to-right line as the reports are) and Arabic letters
  take their joined forms (arabic-reshaper): reportlab draws glyphs left to right as given,
  so ``رقم-123`` read ``مقر`` backwards, its letters apart. A PDF reader's text layer
  (pdftotext, copy and paste) gives the Arabic and Hebrew back in reading order.
- Control characters show as ``\\xNN`` (ESC as ``\\x1b``), as the tables and CSV files show
  them (``without_control``), and a line break breaks the line.
- A character no font here holds (Devanagari, Thai, an emoji...) shows as its code,
  ``\\u0915``, as Python's ``ascii()`` writes it: never as a black box or a blank, which
  would make two different values print alike.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import cache
from html import escape
from itertools import groupby
from pathlib import Path
from typing import Any

import arabic_reshaper
from bidi import get_display
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.pdfmetrics import registerFontFamily
from reportlab.pdfbase.ttfonts import TTFError, TTFont

from shared.formatting import without_control
from shared.reports.layout import cell_text


def _unicode_fonts() -> tuple[str, str]:
    """(regular, bold) font names covering Latin, Greek, Cyrillic, Arabic and Hebrew text.

    The PDF base fonts (Helvetica) only hold Windows-1252, so names, study IDs and file
    names in other scripts printed as black boxes. DejaVu Sans ships with matplotlib (the
    charts' library, installed with reportlab), so nothing is downloaded; it is embedded as
    a subset. Without it the base fonts are used (and other characters show as codes).
    """
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(folder / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(folder / "DejaVuSans-Bold.ttf")))
    except (ImportError, OSError, TTFError):
        return "Helvetica", "Helvetica-Bold"
    registerFontFamily("DejaVuSans", normal="DejaVuSans", bold="DejaVuSans-Bold",
                       italic="DejaVuSans", boldItalic="DejaVuSans-Bold")
    return "DejaVuSans", "DejaVuSans-Bold"


FONT, BOLD_FONT = _unicode_fonts()

# reportlab's CID fonts (Adobe's Asian font packs, named, not embedded): Japanese, Simplified
# Chinese (Adobe-GB1 holds every CJK Unified Ideograph of the Basic Multilingual Plane, so
# Han text without kana or hangul, Chinese or Japanese, takes it), Korean.
CJK_FONTS = {"ja": "HeiseiKakuGo-W5", "zh": "STSong-Light", "ko": "HYGothic-Medium"}
for _name in CJK_FONTS.values():
    pdfmetrics.registerFont(UnicodeCIDFont(_name))

# Code point ranges (first, last) of each CJK script: hangul (jamo, compatibility jamo,
# syllables, half-width); kana (hiragana, katakana, their extensions, half-width katakana);
# the rest any of the three fonts holds (radicals, CJK symbols and punctuation, bopomofo,
# enclosed and compatibility forms, ideographs, full-width forms). The CID fonts' encodings
# (UCS-2) reach the Basic Multilingual Plane only.
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF),
           (0xFFA0, 0xFFDC))
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0x32D0, 0x32FE), (0xFF61, 0xFF9F))
_HAN = ((0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3100, 0x312F), (0x3190, 0x31EF),
        (0x3200, 0x33FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
        (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0xFF00, 0xFF60), (0xFFE0, 0xFFEF))

# Arabic letters joined as DejaVu Sans draws them: its presentation forms, the lam-alef
# ligatures among them; other ligatures (ALLAH, U+FDF2, on by default) it lacks. Harakat
# (vowel marks) are kept: they are part of the value.
_RESHAPER = arabic_reshaper.ArabicReshaper(configuration={
    "delete_harakat": False, "shift_harakat_position": False, "ARABIC LIGATURE ALLAH": False})
_RIGHT_TO_LEFT = frozenset({"R", "AL"})


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(first <= code <= last for first, last in ranges)


def _script(char: str) -> str | None:
    """"ko", "ja", "han" (any CJK font) or None: the CJK script of ``char``, if any."""
    code = ord(char)
    if code < 0x1100 or code > 0xFFEF:
        return None
    if _in(code, _HANGUL):
        return "ko"
    if _in(code, _KANA):
        return "ja"
    return "han" if _in(code, _HAN) else None


def _han_font(text: str) -> str:
    """The CID font for the Han characters of ``text``: Japanese beside kana, Korean beside
    hangul, else Chinese."""
    scripts = {_script(c) for c in text}
    return CJK_FONTS["ja" if "ja" in scripts else "ko" if "ko" in scripts else "zh"]


@cache
def _covered(font: str) -> Callable[[str], bool]:
    """Whether ``font`` (a registered one) has a glyph for a character."""
    face = getattr(pdfmetrics.getFont(font), "face", None)
    glyphs = getattr(face, "charToGlyph", None)
    if glyphs is not None:  # an embedded TrueType font: its own map
        # Of the Basic Multilingual Plane: reportlab's text layer (ToUnicode) gave 😀
        # (U+1F600) back as U+1F60, another character; its code is written instead.
        codes = frozenset(c for c in glyphs if c <= 0xFFFF)
        return lambda char: ord(char) in codes
    # A base font (Helvetica): Windows-1252.
    return lambda char: char.isascii() or _in_cp1252(char)


def _in_cp1252(char: str) -> bool:
    try:
        char.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _code(char: str) -> str:
    """``char`` as Python's ``ascii()`` writes it: ``\\xe9``, ``\\u0915``, ``\\U0001f600``."""
    return ascii(char)[1:-1]


def _visual(line: str) -> str:
    """``line`` in display order, left to right, with Arabic letters joined (unchanged
    without right-to-left text)."""
    if not any(unicodedata.bidirectional(c) in _RIGHT_TO_LEFT for c in line):
        return line
    # A left-to-right base, as the reports' lines are: a value of Arabic or Hebrew reads
    # right to left within it, its digits left to right.
    return str(get_display(_RESHAPER.reshape(line), base_dir="L"))


def _runs(line: str, covered: Callable[[str], bool], han: str) -> str:
    def font_of(char: str) -> str | None:  # None: the style's own font; "": no font
        if covered(char):
            return None
        script = _script(char)
        if script is None:
            return ""
        return han if script == "han" else CJK_FONTS[script]

    parts = []
    for font, chars in groupby(line, font_of):
        run = "".join(chars)
        if font is None:
            parts.append(escape(run))
        elif font:
            parts.append(f'<font name="{font}">{escape(run)}</font>')
        else:
            parts.append(escape("".join(map(_code, run))))
    return "".join(parts)


def markup(value: Any, font: str) -> str:
    """``value`` (as ``cell_text`` writes it) as paragraph markup in a style whose font is
    ``font``: readable whatever its script, as the module's notes say."""
    text = without_control(cell_text(value))
    if text.isascii():  # every such character is in both fonts: no font run, no reordering
        return escape(text).replace("\n", "<br/>")
    covered, han = _covered(font), _han_font(text)
    return "<br/>".join(_runs(_visual(line), covered, han) for line in text.split("\n"))
