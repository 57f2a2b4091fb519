"""Exam and image PDFs hang each view as a screening reader does: the right breast in the
left column with its chest wall on the right edge, the left breast in the right column with
its chest wall on the left, so the chest walls meet; the heatmap stays on what the model
looked at. The model itself still reads every view chest wall left (presentation only).

Checked in the rendered page's pixels: a right CC view carries a marker (a saturated ring
around a black core) high up by its chest wall, and a purpose-built model's heatmap fires on
saturated pixels only, so the marker's core and the hot spot must land together, upper
right, in the R-CC picture, which must sit left of the L-CC one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from models.heatmaps import encode_png
from models.registry import MODEL_FILE, write_model_dir
from producer.cli.exit_codes import ExitCode
from shared.enums import Laterality
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.reports.exam_data import ViewResult
from shared.reports.exam_pdf import _hung_rows
from shared.reports.view_images import heatmap_in_frame
from shared.synthetic import make_exam_set, synth_mammogram, write_png
from tests.helpers.cli import invoke_cli
from tests.helpers.dicom_edit import rewrite_dicom

pytestmark = pytest.mark.skipif(not (shutil.which("pdftoppm") and shutil.which("pdftotext")),
                                reason="poppler-utils (pdftoppm, pdftotext) is not installed")

INPUT = (256, 256)
DPI = 150
# In the stored R-CC (512 x 416, chest wall on the right edge): high up, by the chest wall.
MARKER_ROW, MARKER_COL, RING, CORE = 150, 335, 30, 10


def _build_marker_model(directory: Path, stride: int) -> Path:
    """heatmap(i, j) = sigmoid(100 * (share of saturated pixels in the 4-stride window at
    (stride i, stride j) - 0.04)): hot over the marker's ring, cold over tissue (stretched
    below 1)."""
    import keras

    patch = 4 * stride
    image = keras.Input((*INPUT, 1))
    saturated = keras.layers.Conv2D(1, 1, activation="relu", name="sat")(image)
    cells = keras.layers.AveragePooling2D(stride, strides=stride)(saturated)
    windows = keras.layers.AveragePooling2D(patch // stride, strides=1)(cells)
    hot = keras.layers.Conv2D(1, 1, activation="sigmoid", name="thr")(windows)
    side = INPUT[0] // stride - patch // stride + 1
    heatmap = keras.layers.Reshape((side, side), name="heatmap")(hot)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(
        keras.layers.GlobalMaxPooling2D()(hot))
    model = keras.Model(image, {"probabilities": probabilities, "heatmap": heatmap})
    model.get_layer("sat").set_weights([np.full((1, 1, 1, 1), 50, np.float32),
                                        np.array([-49], np.float32)])
    model.get_layer("thr").set_weights([np.full((1, 1, 1, 1), 100, np.float32),
                                        np.array([-4], np.float32)])
    model.get_layer("probabilities").set_weights([np.array([[-5, 2.5, 5]], np.float32),
                                                  np.array([2.5, 0, -1], np.float32)])
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    write_model_dir(directory, name="marker-test-model", version="0.0.1", input_size=INPUT,
                    preprocessing_version=PREPROCESSING_VERSION,
                    extra={"outputs": ["probabilities", "heatmap"], "patch": patch,
                           "heatmap_stride": stride})
    return directory


def _mark(pixels: np.ndarray) -> np.ndarray:
    """A ring at the image's maximum around a black core: the model fires on the ring, and
    the core (no tissue, so no overlay) is found on the page as a black hole in the breast."""
    marked = pixels.copy()
    rows, cols = np.ogrid[:pixels.shape[0], :pixels.shape[1]]
    distance = np.hypot(rows - MARKER_ROW, cols - MARKER_COL)
    marked[distance <= RING] = 4095
    marked[distance <= CORE] = 0
    return marked


@dataclass
class Night:
    folder: Path
    env: dict[str, str]
    ids: dict[str, int]
    study_uid: str

    def report(self, monkeypatch: pytest.MonkeyPatch, *args: str) -> Path:
        out = self.folder / f"{'-'.join(args)}.pdf"
        code, text = invoke_cli(["report", *args, "-o", str(out)], monkeypatch, self.folder,
                                **self.env)
        assert code == ExitCode.OK, text
        return out


def _run_night(folder: Path, *, stride: int, views: tuple[str, ...] = ("LCC", "RCC", "LMLO",
               "RMLO", "unsided")) -> Night:
    """`mammo run` over an exam whose R-CC is marked (and a marked right breast of no stated
    laterality), those of ``views`` only, with a marker model of ``stride``."""
    model = _build_marker_model(folder / "model", stride)
    files = make_exam_set(folder / "in", n_exams=1, seed=3)  # exam 0: no lesion
    for path in files:
        if path.stem.rpartition("_")[2] not in views:
            path.unlink()
        else:  # a patient's exam: no SYNTHETIC banner between title and picture
            rewrite_dicom(path, Manufacturer="ACME")
    [right_cc] = [p for p in files if p.name.endswith("_RCC.dcm")]
    ds = pydicom.dcmread(right_cc)
    ds.PixelData = _mark(ds.pixel_array).astype(np.uint16).tobytes()
    ds.save_as(right_cc)
    if "unsided" in views:  # no manifest, no header: a right breast, marked the same way
        write_png(folder / "in" / "unsided.png", _mark(synth_mammogram(
            np.random.default_rng(3), laterality=Laterality.RIGHT)) << 4)
    env = {"database_url": f"sqlite:///{folder / 'm.db'}", "model": str(model),
           "report_dir": str(folder / "reports")}
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, out = invoke_cli(["run", str(folder / "in"), "--format", "json"], monkeypatch,
                               folder, **env)
    assert code == ExitCode.OK, out
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    ids = {Path(str(r["source"])).stem.rpartition("_")[2]: int(r["image_id"]) for r in rows}
    [uid] = {r["study_uid"] for r in rows if r["study_uid"]}
    return Night(folder, env, ids, str(uid))


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Night:
    return _run_night(tmp_path_factory.mktemp("hanging"), stride=16)  # the shipped stride


@dataclass(frozen=True)
class Word:
    page: int
    text: str
    x0: float
    y0: float
    x1: float
    y1: float


def _words(pdf: Path) -> list[Word]:
    html = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    words = []
    for page, body in enumerate(html.split("<page ")[1:], start=1):
        for x0, y0, x1, y1, text in re.findall(
                r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">'
                r"([^<]*)</word>", body):
            words.append(Word(page, text, float(x0), float(y0), float(x1), float(y1)))
    return words


def _title(words: list[Word], view: str) -> Word:
    """The view cell's title word ("R-CC" followed by "(image N)")."""
    [title] = [w for w, after in pairwise(words) if w.text == view and after.text == "(image"]
    return title


@dataclass(frozen=True)
class Seen:
    chest_wall: str
    marker: tuple[float, float] | None  # the core's centre, as a share of width, height
    hot: tuple[float, float] | None  # the red overlay's centre, the same way


def _picture(pdf: Path, words: list[Word], title: Word) -> np.ndarray:
    """The view's picture on the rendered page: what is not white between the cell's title
    and the first text below it."""
    prefix = pdf.parent / f"{pdf.stem}-p{title.page}"
    subprocess.run(["pdftoppm", "-r", str(DPI), "-png", "-f", str(title.page), "-l",
                    str(title.page), "-singlefile", str(pdf), str(prefix)], check=True)
    rendered = cv2.imread(f"{prefix}.png")
    assert rendered is not None
    page = cv2.cvtColor(rendered, cv2.COLOR_BGR2RGB)
    left, right = title.x0 - 4, title.x0 + 200  # points: the picture is 130 pt at most
    below = min(w.y0 for w in words if w.page == title.page and w.y0 > title.y1 + 1
                and left <= w.x0 <= right)
    scale = DPI / 72
    cell = page[round(title.y1 * scale) + 2:round(below * scale) - 2,
                round(left * scale):round(right * scale)]
    rows, cols = np.nonzero(cell.min(axis=2) < 240)
    return cell[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _seen(picture: np.ndarray) -> Seen:
    height, width = picture.shape[:2]
    tissue = picture.max(axis=2) > 40
    edge = max(2, width // 40)
    # The breast is cut off by the chest-wall edge: tissue down most of that edge only.
    chest_wall = "left" if tissue[:, 1:edge].mean() > tissue[:, -edge:-1].mean() else "right"
    count, labels, stats, centres = cv2.connectedComponentsWithStats(
        (~tissue).astype(np.uint8))
    # The core: a black hole inside the breast (not the background, which meets the edge),
    # in a bright ring (dark tissue is rimmed by grey).
    rims = {}
    for i in range(1, count):
        left, top, wide, high, area = stats[i]
        if left > 0 and top > 0 and left + wide < width and top + high < height and area >= 20:
            hole = (labels == i).astype(np.uint8)
            rim = cv2.dilate(hole, np.ones((3, 3), np.uint8), iterations=4) > hole
            rims[i] = float(picture[rim].max(axis=1).mean())
    core = max(rims, key=rims.__getitem__, default=None)
    marker = (None if core is None or rims[core] < 120
              else (centres[core][0] / width, centres[core][1] / height))
    rgb = picture.astype(np.int16)
    red = (rgb[..., 0] > rgb[..., 1] + 50) & (rgb[..., 0] > rgb[..., 2] + 50)
    hot_rows, hot_cols = np.nonzero(red)
    hot = (hot_cols.mean() / width, hot_rows.mean() / height) if red.sum() > 30 else None
    return Seen(chest_wall, marker, hot)


def _assert_hung_right_with_marker(seen: Seen) -> None:
    assert seen.chest_wall == "right"
    assert seen.marker is not None and seen.hot is not None
    # High up by the chest wall, as stored: upper right once hung, not mirrored.
    assert seen.marker[0] > 0.55 and seen.marker[1] < 0.45, seen
    assert np.hypot(seen.hot[0] - seen.marker[0], seen.hot[1] - seen.marker[1]) < 0.1, seen


def test_the_exam_pdf_hangs_right_views_left_with_their_chest_wall_on_the_right(
        night: Night, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = night.report(monkeypatch, "exam", night.study_uid)
    words = _words(pdf)
    titles = {v: _title(words, v) for v in ("R-CC", "L-CC", "R-MLO", "L-MLO")}
    for right, left in (("R-CC", "L-CC"), ("R-MLO", "L-MLO")):
        assert titles[right].x0 < titles[left].x0  # right breast in the reader's left column
        assert (titles[right].page, round(titles[right].y0)) == \
            (titles[left].page, round(titles[left].y0))  # one row
    assert (titles["R-CC"].page, titles["R-CC"].y0) < (titles["R-MLO"].page, titles["R-MLO"].y0)
    _assert_hung_right_with_marker(_seen(_picture(pdf, words, titles["R-CC"])))
    left_cc = _seen(_picture(pdf, words, titles["L-CC"]))
    assert left_cc.chest_wall == "left" and left_cc.hot is None
    assert _seen(_picture(pdf, words, titles["R-MLO"])).chest_wall == "right"
    assert _seen(_picture(pdf, words, titles["L-MLO"])).chest_wall == "left"
    text = " ".join(w.text for w in words)
    assert "hung as for reading" in text and "Right breast in the left column" in text
    assert "laterality unknown" not in text


def test_the_image_report_hangs_a_right_view_with_its_chest_wall_on_the_right(
        night: Night, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = night.report(monkeypatch, "image", str(night.ids["RCC"]))
    words = _words(pdf)
    _assert_hung_right_with_marker(_seen(_picture(pdf, words, _title(words, "R-CC"))))
    assert "Right breast in the left column" not in " ".join(w.text for w in words)


def test_a_view_of_unknown_laterality_says_which_way_it_is_shown(
        night: Night, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = night.report(monkeypatch, "image", str(night.ids["unsided"]))
    words = _words(pdf)
    # Shown as its file has it (chest wall right, found by the guess), and said to be so.
    _assert_hung_right_with_marker(_seen(_picture(pdf, words, _title(words, "?-?"))))
    text = " ".join(w.text for w in words)
    assert ("laterality unknown: shown with the chest wall on the right, where the automatic "
            "chest-wall guess found it in the file; not a known side") in text


def test_a_heatmap_of_another_stride_is_placed_at_that_stride() -> None:
    grid = np.zeros((13, 13), dtype=np.float32)
    grid[2, 5] = 1.0  # stride 8, patch 32: window top-left (16, 40), centre (32, 56)
    placed = heatmap_in_frame(encode_png(grid), (128, 128), patch=32, stride=8)
    rows, cols = np.nonzero(placed >= 0.9 * placed.max())
    assert abs(rows.mean() - 32) <= 4 and abs(cols.mean() - 56) <= 4
    default = heatmap_in_frame(encode_png(grid), (256, 256), patch=64)  # the shipped stride
    rows, cols = np.nonzero(default >= 0.9 * default.max())
    assert abs(rows.mean() - 64) <= 8 and abs(cols.mean() - 112) <= 8


def _view(image_id: int, laterality: str | None, view: str | None,
          view_flags: str | None = None) -> ViewResult:
    return ViewResult(image_id, f"{image_id}.dcm", f"sop:{image_id}", laterality, view, "done",
                      None, None, None, None, None, view_flags=view_flags)


def test_a_missing_view_leaves_its_place_and_views_of_no_side_come_last() -> None:
    l_cc, l_mlo, r_mlo = _view(1, "L", "CC"), _view(2, "L", "MLO"), _view(3, "R", "MLO")
    spot, unknown = _view(4, "R", "CC", "spot_compression"), _view(5, None, None)
    rows = _hung_rows([l_cc, l_mlo, unknown, r_mlo, spot])
    assert rows == [[None, l_cc], [r_mlo, l_mlo], [spot, None], [unknown, None]]


def test_a_model_of_another_stride_is_overlaid_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its metadata's heatmap_stride (8), not the shipped architecture's (16): at 16 the hot
    # spot was drawn twice as far from the frame's corner as the marker it fired on.
    night = _run_night(tmp_path, stride=8, views=("RCC",))
    pdf = night.report(monkeypatch, "image", str(night.ids["RCC"]))
    words = _words(pdf)
    _assert_hung_right_with_marker(_seen(_picture(pdf, words, _title(words, "R-CC"))))
