"""The synthetic generator: mammogram-like, labelled synthetic, deterministic per seed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from shared.enums import Laterality, View
from shared.errors import TruncatedImageError
from shared.imaging.readers import decode, read_header
from shared.synthetic import (
    DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
    SYNTHETIC_LABEL,
    make_exam_set,
    synth_mammogram,
    write_dicom,
    write_png,
    write_truncated_copy,
)


def test_synth_mammogram_shape_range_and_determinism() -> None:
    image = synth_mammogram(np.random.default_rng(5))
    assert image.shape == (512, 416) and image.dtype == np.uint16
    assert image.max() <= 4095 and image.max() > 2000 and image.min() < 100
    np.testing.assert_array_equal(image, synth_mammogram(np.random.default_rng(5)))
    assert not np.array_equal(image, synth_mammogram(np.random.default_rng(6)))
    assert synth_mammogram(np.random.default_rng(5), size=(100, 90), bits=10).max() <= 1023


@pytest.mark.parametrize("laterality, chest_wall", [(Laterality.LEFT, 0), (Laterality.RIGHT, -1)])
def test_breast_lies_against_the_chest_wall(laterality: Laterality, chest_wall: int) -> None:
    image = synth_mammogram(np.random.default_rng(1), laterality=laterality).astype(float)
    far_edge = -1 - chest_wall
    assert image[:, chest_wall].mean() > 5 * image[:, far_edge].mean()


def test_lesion_adds_a_bright_spot() -> None:
    plain = synth_mammogram(np.random.default_rng(9), lesion=False).astype(int)
    sick = synth_mammogram(np.random.default_rng(9), lesion=True).astype(int)
    assert (sick - plain).max() > 500


def test_write_dicom_is_labelled_for_presentation_mg(tmp_path: Path) -> None:
    pixels = synth_mammogram(np.random.default_rng(0), size=(64, 64))
    path = write_dicom(tmp_path / "x.dcm", pixels, study_uid="1.2.3", sop_uid="1.2.3.4",
                       laterality=Laterality.LEFT, view=View.MLO)
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION and ds.Modality == "MG"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.BurnedInAnnotation == "NO"
    assert ds.SeriesDescription == SYNTHETIC_LABEL
    assert (ds.ImageLaterality, ds.ViewPosition) == ("L", "MLO")
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "y.dcm", pixels + 4096, study_uid="1.2", sop_uid="1.2.1",
                    laterality=Laterality.LEFT, view=View.CC)


def test_write_png_is_16_bit(tmp_path: Path) -> None:
    pixels = synth_mammogram(np.random.default_rng(0), size=(64, 64))
    path = write_png(tmp_path / "x.png", pixels)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back is not None and back.dtype == np.uint16
    np.testing.assert_array_equal(back, pixels)


def test_exam_set_is_four_views_per_exam_and_reproducible(tmp_path: Path) -> None:
    first = make_exam_set(tmp_path / "a", n_exams=3, seed=11)
    again = make_exam_set(tmp_path / "b", n_exams=3, seed=11)
    other = make_exam_set(tmp_path / "c", n_exams=3, seed=12)
    assert len(first) == 12
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    headers = [read_header(p) for p in first]
    assert len({h.study_instance_uid for h in headers}) == 3
    assert len({h.identity for h in headers}) == 12
    assert {(h.laterality, h.view) for h in headers[:4]} == {
        (lat, view) for lat in (Laterality.LEFT, Laterality.RIGHT) for view in (View.CC, View.MLO)}
    assert headers[0].identity != read_header(other[0]).identity
    comments = [str(pydicom.dcmread(p, stop_before_pixels=True).ImageComments) for p in first]
    assert sum("lesion: yes" in c for c in comments) == 2  # exam 1: both views of one breast
    assert all(decode(p, max_pixels=10**7).pixels.shape == (512, 416) for p in first)


def test_exam_set_as_png(tmp_path: Path) -> None:
    paths = make_exam_set(tmp_path, n_exams=1, seed=0, fmt="png")
    assert [p.suffix for p in paths] == [".png"] * 4
    decoded = decode(paths[0], max_pixels=10**7)
    assert decoded.max_value == 65535 and decoded.pixels.max() > 4095  # scaled to 16 bits
    with pytest.raises(ValueError):
        make_exam_set(tmp_path, n_exams=1, seed=0, fmt="bmp")  # type: ignore[arg-type]


def test_truncated_copy_is_a_distinct_image_that_fails_as_truncated(tmp_path: Path) -> None:
    source = make_exam_set(tmp_path, n_exams=1, seed=4)[0]
    broken = write_truncated_copy(source, tmp_path / "broken.dcm")
    assert read_header(broken).identity != read_header(source).identity
    with pytest.raises(TruncatedImageError, match="7FE0,0010"):
        decode(broken, max_pixels=10**7)
