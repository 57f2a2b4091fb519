"""The exam PDF's view pictures: JPEG at the size they are printed, so a night's PDFs are
written in seconds, not minutes, and weigh tens of kilobytes each, heatmap still legible."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select

from models.heatmaps import encode_png
from producer.embedded_run import run_embedded
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Study
from shared.imaging.model_input import ModelInputSource
from shared.reports.exam_reports import write_exam_report
from shared.reports.view_images import THUMBNAIL_SIDE, model_frame, overlay, thumbnail
from shared.synthetic import make_exam_set

INPUT = (512, 416)  # the shipped model's frame


def _heat() -> np.ndarray:
    """A smooth blob of high P(abnormal) with a sharp-edged square beside it."""
    rows, cols = np.mgrid[0:32, 0:26].astype(np.float32)
    heat = np.exp(-((rows - 12) ** 2 + (cols - 10) ** 2) / 30).astype(np.float32)
    heat[20:26, 4:10] = 1.0
    return heat


def _reference(source: ModelInputSource, heat_png: bytes) -> np.ndarray:
    """The picture drawn at the model's full frame, then shrunk: what the view shows."""
    frame = model_frame(source).pixels
    assert frame is not None
    heat = cv2.resize(cv2.imdecode(np.frombuffer(heat_png, np.uint8), cv2.IMREAD_GRAYSCALE)
                      .astype(np.float32) / 255, (INPUT[1], INPUT[0]),
                      interpolation=cv2.INTER_LINEAR)
    picture = overlay(frame, heat)
    rows = np.flatnonzero((frame > 0).any(axis=1))
    cols = np.flatnonzero((frame > 0).any(axis=0))
    picture = picture[:rows[-1] + 1, :cols[-1] + 1]
    scale = THUMBNAIL_SIDE / max(picture.shape[:2])
    return np.asarray(cv2.resize(picture, (round(picture.shape[1] * scale),
                                           round(picture.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA))


def test_a_view_thumbnail_is_a_small_jpeg_that_shows_the_same_picture(tmp_path: Path) -> None:
    path = make_exam_set(tmp_path, n_exams=1, seed=6)[0]
    source = ModelInputSource(str(path), "L", None, INPUT, 10**8)
    heat_png = encode_png(_heat())
    thumb = thumbnail(source, heat_png, patch=None)
    assert thumb is not None and thumb.image_available and thumb.heatmap_available
    assert thumb.jpeg[:3] == b"\xff\xd8\xff"  # a JPEG: reportlab embeds its bytes as they are
    # 256 x 208 RGB: a PNG of it took 130 KB, deflated again and ASCII85-encoded in the PDF.
    assert len(thumb.jpeg) < 40_000
    shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(thumb.jpeg, np.uint8), cv2.IMREAD_COLOR),
                         cv2.COLOR_BGR2RGB).astype(np.int16)
    expected = _reference(source, heat_png).astype(np.int16)
    assert shown.shape == expected.shape and max(shown.shape[:2]) == THUMBNAIL_SIDE
    difference = np.abs(shown - expected)
    assert difference.mean() < 3  # of 255: the same picture, grey and colours alike
    # The heatmap's colours stay where they were drawn (full-size colour, no chroma halving).
    red = (expected[..., 0] > 150) & (expected[..., 2] < 100)
    assert red.any() and (difference[red].mean() < 12)


def test_the_exam_pdf_embeds_its_views_as_jpeg(settings: Settings, tmp_path: Path) -> None:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    make_exam_set(tmp_path / "in", n_exams=1, seed=7)
    run_embedded(settings, sessions, [tmp_path / "in"], name="pictures")
    with sessions() as session:
        uid = session.execute(select(Study.study_uid)).scalar_one()
        pdf = write_exam_report(session, uid, tmp_path / "exam.pdf", "pdf", settings)
    data = pdf.read_bytes()
    # Each image's dictionary: /Filter [ ... ] /Height ... /Subtype /Image
    filters = re.findall(rb"/Filter \[ ([^\]]*) \][^>]*/Subtype /Image", data)
    assert data.count(b"/Subtype /Image") == len(filters) == 4
    assert all(f.split()[-1] == b"/DCTDecode" for f in filters), filters
    engine.dispose()
