"""Every real DICOM file in ../shared/data/dicom (see its README), read as the worker reads it.

Skipped with a reason when the shared data folder is absent (a user's fresh clone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.enums import ErrorCode, Laterality, View
from shared.errors import InputError, NotAMammogramError
from shared.imaging.preprocess import preprocess, to_unit_range
from shared.imaging.readers import decode, gdcm_direct, read_header
from shared.pseudonym import Pseudonymizer
from tests.conftest import SHARED_DATA

DICOM = SHARED_DATA / "dicom"
BIG = 10**8
KEY = Pseudonymizer(b"unit-test-key-not-a-secret")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DICOM.is_dir(), reason=f"real DICOM files absent: {DICOM}"),
]

# file: (rows, columns), laterality, view, chest wall side as stored, flags
EXPECTED: dict[str, tuple[tuple[int, int], Laterality, View, str | None, tuple[str, ...]]] = {
    "GH133.dcm": ((3062, 2394), Laterality.RIGHT, View.MLO, "right", ()),
    "OutOfBoundsOverlay.dcm": ((788, 1318), Laterality.LEFT, View.CC, None, ("stereotactic",)),
    "MG1_J2KI.dcm": ((4664, 3064), Laterality.LEFT, View.MLO, "left", ()),
    "MG1_JPLY.dcm": ((4664, 3064), Laterality.LEFT, View.MLO, "left", ()),
    "MG_Explicit_Little.dcm": ((512, 512), Laterality.RIGHT, View.CC, "right",
                               ("magnification",)),
}

# MG headers over a synthetic test pattern (the data README): refused, never scored.
TEST_PATTERNS = {"MG_Explicit_Little.dcm"}


def _path(name: str) -> Path:
    path = DICOM / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_header(name: str) -> None:
    shape, laterality, view, _, flags = EXPECTED[name]
    header = read_header(_path(name), pseudonymize=KEY)
    assert (header.rows, header.columns) == shape
    assert (header.laterality, header.view) == (laterality, view)
    assert header.view_flags == flags
    assert header.patient_pseudonym is not None and header.patient_pseudonym.startswith("p-")
    assert header.identity.startswith("sop:")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_decodes_to_its_range_and_preprocesses(name: str) -> None:
    shape, laterality, _, chest_wall, _ = EXPECTED[name]
    try:
        decoded = decode(_path(name), max_pixels=BIG)
    except InputError as error:
        # Only acceptable when this installation lacks the decoder, and it must say which.
        assert error.code is ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX, error.message
        assert "installing" in error.message
        pytest.skip(f"decoder not installed: {error.message}")
    assert decoded.pixels.shape == shape and decoded.pixels.dtype == np.float32
    assert float(decoded.pixels.min()) >= 0 and float(decoded.pixels.max()) <= decoded.max_value
    assert float(decoded.pixels.max()) - float(decoded.pixels.min()) > 0.5 * decoded.max_value
    assert decoded.chest_wall_side == chest_wall
    if name in TEST_PATTERNS:
        with pytest.raises(NotAMammogramError, match="almost unrelated"):
            preprocess(decoded, (256, 208), laterality=laterality)
        return
    out = preprocess(decoded, (256, 208), laterality=laterality)
    assert out.shape == (256, 208, 1) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_12_bit_jpeg_extended_decodes_like_its_jpeg_2000_twin() -> None:
    """MG1_JPLY and MG1_J2KI are the same film, lossy-compressed two ways."""
    if not gdcm_direct.available():
        with pytest.raises(InputError) as caught:
            decode(_path("MG1_JPLY.dcm"), max_pixels=BIG)
        assert caught.value.code is ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
        assert "python-gdcm" in caught.value.message
        return
    jply = to_unit_range(decode(_path("MG1_JPLY.dcm"), max_pixels=BIG))
    j2k = to_unit_range(decode(_path("MG1_J2KI.dcm"), max_pixels=BIG))
    assert float(np.abs(jply - j2k).mean()) < 0.01
    assert float(np.corrcoef(jply.ravel()[::97], j2k.ravel()[::97])[0, 1]) > 0.99


def test_several_windows_real_file_records_the_choice() -> None:
    header = read_header(_path("GH133.dcm"), pseudonymize=KEY)
    assert header.voi == "VOI LUT 1 of 3 (NORMAL); 3 window(s) not used"


def test_truncated_tomosynthesis_file_gives_a_clear_reason() -> None:
    with pytest.raises(InputError) as caught:
        decode(_path("GH1376.dcm"), max_pixels=BIG)
    # Stored as CT: refused on its Modality before its cut-short pixels are even read.
    assert caught.value.code is ErrorCode.NOT_MAMMOGRAPHY
    assert "'CT'" in caught.value.message


def test_patient_identified_real_file_needs_a_key() -> None:
    with pytest.raises(InputError) as caught:
        read_header(_path("GH133.dcm"))
    assert caught.value.code is ErrorCode.NO_PSEUDONYM_KEY
