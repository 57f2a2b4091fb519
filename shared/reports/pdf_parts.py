"""reportlab building blocks shared by the exam and batch PDFs: styles, tables, images, and a
page footer that repeats the decision-support statement on every page."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, Paragraph, SimpleDocTemplate, Table, TableStyle

from shared.reports.exports import DISCLAIMER
from shared.reports.output import report_file
from shared.reports.pdf_text import BOLD_FONT, FONT, markup


def _style(base: ParagraphStyle, name: str, **changes: Any) -> ParagraphStyle:
    bold = "Bold" in base.fontName
    return ParagraphStyle(name, parent=base, fontName=BOLD_FONT if bold else FONT, **changes)


_STYLES = getSampleStyleSheet()
TITLE = _style(_STYLES["Title"], "mammo_title")
HEADING = _style(_STYLES["Heading2"], "mammo_heading")
BODY = _style(_STYLES["BodyText"], "mammo_body")
VIEW_TITLE = _style(_STYLES["Heading4"], "view_title", spaceBefore=2, spaceAfter=2)
SMALL = _style(BODY, "small", fontSize=7.5, leading=9)
WARNING = ParagraphStyle("warning", parent=BODY, backColor=colors.HexColor("#fff4d6"),
                         borderColor=colors.HexColor("#e0b84a"), borderWidth=0.5,
                         borderPadding=4, fontName=BOLD_FONT, spaceBefore=4,
                         spaceAfter=8)
PAGE_WIDTH = A4[0] - 30 * mm


def para(text: Any, style: ParagraphStyle = BODY) -> Paragraph:
    """The one way text gets into a report PDF (``pdf_text.markup``): any script readable,
    control characters shown as ``\\xNN``."""
    return Paragraph(markup(text, style.fontName), style)


def disclaimer() -> Paragraph:
    return para(DISCLAIMER, WARNING)


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], *,
          widths: Sequence[float] | None = None,
          style: Sequence[tuple[Any, ...]] = ()) -> Table:
    """A grid table; cells wrap (each is a small paragraph) so long reasons stay readable.

    Without ``header`` it is a key/value table: the first column is shaded instead.
    ``style``: reportlab table commands added to the grid's (spans, rows kept together).
    """
    body = [[para(c, SMALL) for c in row] for row in rows]
    data = [[para(h, SMALL) for h in header], *body] if header else body
    grid = Table(data, colWidths=list(widths) if widths else None,
                 repeatRows=1 if header else 0, hAlign="LEFT")
    shaded = (0, 0), (-1, 0) if header else (0, -1)
    grid.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
        ("BACKGROUND", shaded[0], shaded[1], colors.HexColor("#eeeeee")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        *style,
    ]))
    return grid


def scaled_image(data: bytes, width: float) -> Image:
    """A PNG or JPEG scaled to ``width`` points, aspect ratio kept (a JPEG is embedded as
    it is, a PNG's pixels are deflated again)."""
    picture = Image(io.BytesIO(data))
    scale = width / picture.imageWidth
    picture.drawWidth, picture.drawHeight = width, picture.imageHeight * scale
    return picture




def _footer(canvas: Canvas, doc: SimpleDocTemplate) -> None:
    canvas.saveState()
    canvas.setFont(FONT, 7)
    canvas.setFillColor(colors.HexColor("#555555"))
    canvas.drawString(15 * mm, 10 * mm, DISCLAIMER)
    canvas.drawRightString(A4[0] - 15 * mm, 5 * mm, f"page {doc.page}")
    canvas.restoreState()


def build_pdf(path: Path, title: str, story: list[Flowable]) -> Path:
    with report_file(path) as temporary:
        doc = SimpleDocTemplate(str(temporary), pagesize=A4, title=title,
                                author="mammo-pipeline", leftMargin=15 * mm,
                                rightMargin=15 * mm, topMargin=15 * mm, bottomMargin=18 * mm)
        doc.build(story, onFirstPage=_footer, onLaterPages=_footer)
    return path
