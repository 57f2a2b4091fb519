"""What the "is this still the registered file?" check costs beside a decode.

The worker (before decoding a queued image), the watcher (before taking a known path for its
registered file) and the exam report (before drawing a view) all call
``shared.imaging.identity.file_has_identity``: a DICOM header read for a SOP Instance UID, a
sha256 of the bytes otherwise. Timed side by side with ``decode`` on the same file, in one
run (the machine is shared: compare the columns, not runs). Minimum of ``--repeat`` runs.

    python -m tests.benchmarks.identity_check [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.enums import Laterality, View
from shared.imaging.identity import file_has_identity
from shared.imaging.readers import decode, read_header
from shared.synthetic import synth_mammogram, write_dicom

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _best_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = write_dicom(Path(tmp) / "full-field.dcm",
                                synth_mammogram(np.random.default_rng(0), size=(4096, 3328)),
                                study_uid="1.2.826.0.1.3680043.8.498.7",
                                sop_uid="1.2.826.0.1.3680043.8.498.7.1",
                                laterality=Laterality.LEFT, view=View.CC)
        files = [(synthetic, "synthetic 4096 x 3328 DICOM, uncompressed")]
        for path, label in ((SHARED_DATA / "mini-mias/mdb001.png", "mini-MIAS PNG 1024 x 1024"),
                            (SHARED_DATA / "dicom/GH133.dcm", "GH133, JPEG lossless")):
            if path.is_file():
                files.append((path, label))
        print(f"{'file':45} {'identity ms':>12} {'decode ms':>10} {'ratio':>7}")
        for path, label in files:
            identity = read_header(path, pseudonymize=str).identity
            assert file_has_identity(path, identity)
            check = _best_ms(lambda p=path, i=identity: file_has_identity(p, i), args.repeat)
            full = _best_ms(lambda p=path: decode(p, max_pixels=10**9), args.repeat)
            print(f"{label:45} {check:12.2f} {full:10.1f} {check / full:7.1%}")


if __name__ == "__main__":
    main()
