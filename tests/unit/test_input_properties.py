"""Any file, however odd, ends as a model input or as an ``InputError`` with a reason.

Generated inputs go through the worker's own step (header read at intake, then
``load_model_input``): raster files in every depth and channel count OpenCV writes, and
valid mammography DICOMs with header elements changed or removed at random. An exception
outside the error hierarchy would reach the database as an "internal" failure with a
library's text instead of a sentence a person can act on. The hand-picked bad files of
``tests/helpers/bad_inputs.py`` check each reason; these look for the inputs nobody picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.enums import ErrorCode, Laterality, View
from shared.errors import InputError
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.readers import read_header
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.bad_inputs import LEGEND, MAX_PIXELS, BadKind, write_kind
from tests.helpers.dicom_edit import rewrite_dicom

SIZE = (64, 64)
KEY = Pseudonymizer(b"unit-test-key-not-a-secret")
# Each example writes into the same folder: hypothesis reuses the test's fixtures.
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ends_well(path: Path) -> None:
    """The property: a tensor in [0, 1] of the model's shape, or a reasoned InputError."""
    try:
        header = read_header(path, pseudonymize=KEY)
        tensor = load_model_input(ModelInputSource(
            str(path), header.laterality.value if header.laterality else None,
            None, SIZE, 10**8)).tensor
    except InputError as exc:
        assert exc.code is not ErrorCode.INTERNAL and exc.message.strip(), exc
        return
    assert tensor.shape == (*SIZE, 1) and tensor.dtype == np.float32
    assert np.isfinite(tensor).all() and tensor.min() >= 0.0 and tensor.max() <= 1.0


# --- raster files ---------------------------------------------------------------------------

DEPTHS: dict[str, list[Any]] = {
    ".png": [np.uint8, np.uint16], ".pgm": [np.uint8, np.uint16], ".jpg": [np.uint8],
    ".tiff": [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32,
              np.float64],
}


@st.composite
def raster(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    ext = draw(st.sampled_from(sorted(DEPTHS)))
    dtype = np.dtype(draw(st.sampled_from(DEPTHS[ext])))
    shape: tuple[int, ...] = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    channels = draw(st.sampled_from([0, 1, 2, 3, 4]))
    if channels:
        shape = (*shape, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    content = draw(st.sampled_from(["noise", "constant", "half_black", "mammogram", "special"]))
    if content == "mammogram":
        grey = synth_mammogram(rng, size=shape[:2]).astype(np.float64) / 4095
        image = np.dstack([grey] * channels) if channels else grey
        pixels = image * (np.iinfo(dtype).max if dtype.kind in "iu" else 1)
    elif dtype.kind == "f":
        pixels = rng.standard_normal(shape) * draw(st.sampled_from([1e-6, 1.0, 1e3, 1e30]))
        if content == "special":
            pixels.flat[rng.integers(pixels.size)] = draw(st.sampled_from(
                [np.nan, np.inf, -np.inf]))
    else:
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, int(info.max) + 1, shape, dtype=np.int64)
        if content in ("constant", "special"):
            pixels[...] = draw(st.sampled_from([info.min, 0, info.max]))
    if content == "half_black":
        pixels[: shape[0] // 2] = 0
    return ext, pixels.astype(dtype)


@SETTINGS
@given(raster())
def test_any_raster_file_ends_as_an_input_or_a_reason(tmp_path: Path,
                                                       drawn: tuple[str, np.ndarray]) -> None:
    ext, pixels = drawn
    path = tmp_path / f"image{ext}"
    try:
        written = cv2.imwrite(str(path), pixels)
    except cv2.error:
        written = False
    if written:  # else a depth or channel count this format cannot hold: nothing to read
        _ends_well(path)


# --- DICOM headers --------------------------------------------------------------------------

_INTS = st.one_of(st.integers(-5, 70_000), st.sampled_from([0, 1, 8, 12, 16, 32, 64]))
_FLOATS = st.one_of(st.floats(width=32), st.sampled_from([0.0, -1.0, 1e-30, 1e30]))
_WORDS = st.sampled_from(["", "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR",
                          "L", "R", "B", "CC", "MLO", "LINEAR", "SIGMOID", "LINEAR_EXACT",
                          "MG", "CT", "FOR PROCESSING", "x" * 70])
MUTABLE: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(["BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                     "SamplesPerPixel", "Rows", "Columns", "PlanarConfiguration",
                     "NumberOfFrames"], _INTS),
    **dict.fromkeys(["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"],
                    _FLOATS),
    **dict.fromkeys(["PixelSpacing", "ImagerPixelSpacing"],
                    st.lists(_FLOATS, max_size=3)),
    **dict.fromkeys(["PhotometricInterpretation", "VOILUTFunction", "ImageLaterality",
                     "Laterality", "ViewPosition", "Modality", "PresentationIntentType"],
                    _WORDS),
    "PatientOrientation": st.lists(_WORDS, max_size=3),
}


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(MUTABLE)), st.none(), min_size=1, max_size=4)
       .flatmap(lambda keys: st.fixed_dictionaries(
           {k: st.one_of(st.none(), MUTABLE[k]) for k in keys})))
def test_any_header_change_ends_as_an_input_or_a_reason(tmp_path: Path,
                                                        changes: dict[str, Any]) -> None:
    path = write_dicom(tmp_path / "mg.dcm",
                       synth_mammogram(np.random.default_rng(3), size=(160, 128)),
                       study_uid="1.2.826.0.1.3680043.8.498.30",
                       sop_uid="1.2.826.0.1.3680043.8.498.31", laterality=Laterality.LEFT,
                       view=View.CC)
    try:
        rewrite_dicom(path, **changes)  # None deletes the element
    except Exception:  # pydicom refused to store the value: nothing to read
        return
    _ends_well(path)


# --- the hand-picked raster files of the bad-input corpus ----------------------------------

RASTER_KINDS = [k for k in LEGEND if k.suffix != ".dcm"]


@pytest.mark.parametrize("kind", RASTER_KINDS, ids=[k.name for k in RASTER_KINDS])
def test_every_bad_raster_kind_fails_with_its_reason(tmp_path: Path, kind: BadKind) -> None:
    """The worker's step, without a worker: what tests/integration/test_bad_inputs.py expects
    of each PNG, JPEG, TIFF and PGM kind, checked in a second."""
    path = write_kind(kind, tmp_path / f"{kind.name}{kind.suffix}", 7)
    with pytest.raises(InputError) as refused:
        read_header(path, pseudonymize=KEY)
        load_model_input(ModelInputSource(str(path), None, None, SIZE, MAX_PIXELS))
    assert refused.value.code is kind.expected, refused.value.message
    assert path.name in refused.value.message
