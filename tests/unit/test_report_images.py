"""Heatmap overlays land where the model looked, in the frame the model saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.architecture import STRIDE
from models.heatmaps import encode_png
from shared.imaging.identity import current_location, file_has_identity
from shared.imaging.model_input import ModelInputSource
from shared.imaging.readers import read_header
from shared.reports.view_images import (
    GONE,
    REPLACED,
    UNREADABLE,
    heatmap_in_frame,
    model_frame,
    overlay,
    thumbnail,
)
from shared.synthetic import make_exam_set
from tests.helpers.dicom_edit import rewrite_dicom

SIZE = (256, 256)


def test_a_patch_location_is_placed_at_its_window_centre() -> None:
    grid = np.zeros((13, 13), dtype=np.float32)
    grid[2, 5] = 1.0  # window top-left at (row 32, col 80); patch 64 -> centre (64, 112)
    placed = heatmap_in_frame(encode_png(grid), SIZE, patch=64)
    rows, cols = np.nonzero(placed >= 0.9 * placed.max())
    assert placed.shape == SIZE
    assert abs(rows.mean() - (2 * STRIDE + 32)) <= STRIDE / 2
    assert abs(cols.mean() - (5 * STRIDE + 32)) <= STRIDE / 2


def test_a_whole_frame_map_is_stretched_over_the_input() -> None:
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[3, 0] = 1.0  # bottom-left quarter
    placed = heatmap_in_frame(encode_png(grid), SIZE, patch=None)
    assert placed[240, 10] > 0.9 and placed[10, 240] < 0.1


def test_overlay_colours_only_the_breast(tmp_path: Path) -> None:
    path = make_exam_set(tmp_path, n_exams=1, seed=4)[0]
    source = ModelInputSource(str(path), "L", None, SIZE, 10**8)
    frame = model_frame(source).pixels
    assert frame is not None and frame.shape == SIZE
    picture = overlay(frame, np.ones(SIZE, dtype=np.float32))
    background = frame == 0
    assert background.any()
    # Outside the breast stays grey (R == G == B); inside, the heatmap tints it.
    assert (picture[background][:, 0] == picture[background][:, 2]).all()
    inside = picture[frame > 0.5]
    assert (inside[:, 0] != inside[:, 2]).mean() > 0.9


def test_a_missing_source_still_shows_the_heatmap(tmp_path: Path) -> None:
    source = ModelInputSource(str(tmp_path / "gone.dcm"), "L", None, SIZE, 10**8)
    heat = encode_png(np.full((8, 8), 0.5, dtype=np.float32))
    thumb = thumbnail(source, heat, patch=None)
    assert thumb is not None and not thumb.image_available and thumb.heatmap_available
    assert thumb.image_missing == GONE  # moved or deleted, not "replaced by another image"
    assert thumbnail(source, None, patch=None) is None
    unreadable = tmp_path / "empty.dcm"
    unreadable.write_bytes(b"")
    thumb = thumbnail(ModelInputSource(str(unreadable), "L", None, SIZE, 10**8), heat,
                      patch=None)
    assert thumb is not None and thumb.image_missing == UNREADABLE


def test_a_file_the_watcher_moved_is_drawn_from_where_it_went(tmp_path: Path) -> None:
    """`mammo watch --after move` leaves the submitted path empty, or holding a newer file
    of the same name; the report reads the recorded processed/ copy instead."""
    first, second = make_exam_set(tmp_path / "in", n_exams=1, seed=4)[:2]
    identity = read_header(first).identity
    archived = tmp_path / "in" / "processed" / first.name
    archived.parent.mkdir()
    first.rename(archived)
    assert current_location(str(first), str(archived)) == str(archived)
    assert current_location(str(first), None) == str(first)
    first.write_bytes(second.read_bytes())  # the scanner reused the name meanwhile
    source = ModelInputSource(current_location(str(first), str(archived)), "L", None, SIZE,
                              10**8)
    thumb = thumbnail(source, None, patch=None, identity=identity)
    assert thumb is not None and thumb.image_available
    archived.unlink()  # deleted from processed/ too: back to the path it came in under
    assert current_location(str(first), str(archived)) == str(first)


def test_another_image_now_at_the_path_is_not_drawn_under_this_heatmap(tmp_path: Path) -> None:
    # Scanners reuse file names: the path may now hold another patient's image.
    first, second = make_exam_set(tmp_path, n_exams=1, seed=4)[:2]
    identity = read_header(first).identity
    source = ModelInputSource(str(first), "L", None, SIZE, 10**8)
    heat = encode_png(np.full((8, 8), 0.5, dtype=np.float32))
    same = thumbnail(source, heat, patch=None, identity=identity)
    assert same is not None and same.image_available
    first.write_bytes(second.read_bytes())
    replaced = thumbnail(source, heat, patch=None, identity=identity)
    assert replaced is not None and replaced.image_missing == REPLACED
    assert replaced.heatmap_available


def test_a_patient_identified_file_is_still_recognised_as_itself(tmp_path: Path) -> None:
    # Its PatientID needs no pseudonym key here: only the SOP Instance UID is compared.
    path = make_exam_set(tmp_path, n_exams=1, seed=5)[0]
    rewrite_dicom(path, PatientName="Doe^Jane", PatientID="PID-42")
    identity = read_header(path, pseudonymize=lambda pid: "p-test").identity
    assert file_has_identity(path, identity)
    source = ModelInputSource(str(path), "L", None, SIZE, 10**8)
    thumb = thumbnail(source, None, patch=None, identity=identity)
    assert thumb is not None and thumb.image_available
