"""Decode + preprocess time per image, for every transfer syntax this installation decodes.

Synthesises one full-size 12-bit mammogram (3328 x 4096 by default), writes it in each
transfer syntax an encoder is installed for, then times, per file:

* ``plugins``: pydicom's ``pixel_array`` with each installed decoding plugin (the evidence
  behind ``PREFERRED_PLUGINS`` in shared/imaging/readers/dicom.py);
* ``decode``: our reader (the plugin it chooses, plus rescale/VOI);
* ``preprocess``: ``shared.imaging.preprocess.preprocess`` to the model input size.

The real files in ../shared/data/dicom (and a few mini-MIAS PNGs) are timed too when present.
Minimum of ``--repeat`` runs, single process. Usage:

    python -m tests.benchmarks.decode [--size 4096x3328] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder

from shared.enums import Laterality, View
from shared.imaging.preprocess import preprocess
from shared.imaging.readers import decode
from shared.synthetic import synth_mammogram, write_compressed, write_dicom

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
INPUT_SIZE = (512, 416)
SYNTAXES = (
    pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.RLELossless, pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGExtended12Bit,
    pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless,
)


def _best(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def _plugin_times(path: Path, repeat: int) -> dict[str, float]:
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    try:
        plugins = sorted(get_decoder(syntax).available_plugins)
    except NotImplementedError:
        return {}
    found = {}
    for plugin in plugins:
        def run(plugin: str = plugin) -> None:
            ds = pydicom.dcmread(path)
            ds.pixel_array_options(decoding_plugin=plugin)
            _ = ds.pixel_array
        try:
            found[plugin] = round(_best(repeat, run), 1)
        except Exception as exc:  # a plugin that cannot do this variant
            found[plugin] = float("nan")
            print(f"  ({path.name}: {plugin} failed: {str(exc).splitlines()[-1][:80]})")
    return found


def measure(path: Path, label: str, repeat: int, laterality: Laterality | None) -> dict[str, Any]:
    decoded = decode(path, max_pixels=10**9)  # warm-up: imports, plugin discovery
    decode_ms = _best(repeat, lambda: decode(path, max_pixels=10**9))
    preprocess_ms = _best(repeat, lambda: preprocess(decoded, INPUT_SIZE, laterality=laterality))
    row: dict[str, Any] = {
        "file": label, "syntax": decoded.notes.get("transfer_syntax", decoded.format),
        "size": f"{decoded.pixels.shape[1]}x{decoded.pixels.shape[0]}",
        "mbytes": round(path.stat().st_size / 1e6, 1),
        "decoder": decoded.notes.get("decoder", "native"),
        "decode_ms": round(decode_ms, 1), "preprocess_ms": round(preprocess_ms, 1),
        "total_ms": round(decode_ms + preprocess_ms, 1),
    }
    if decoded.format == "dicom":
        row["plugins_ms"] = _plugin_times(path, repeat)
    return row


def synthetic_files(folder: Path, size: tuple[int, int]) -> list[tuple[Path, str]]:
    pixels = synth_mammogram(np.random.default_rng(0), size=size, laterality=Laterality.LEFT)
    source = write_dicom(folder / "source.dcm", pixels, study_uid="1.2.826.0.1.3680043.8.498.9",
                         sop_uid="1.2.826.0.1.3680043.8.498.9.1", laterality=Laterality.LEFT,
                         view=View.CC)
    files = []
    for syntax in SYNTAXES:
        target = folder / f"{syntax.keyword or syntax}.dcm"
        try:
            files.append((write_compressed(source, target, syntax), f"synthetic {syntax.name}"))
        except RuntimeError as exc:
            print(f"  (no encoder for {syntax.name}: {exc})")
    return files


def real_files() -> list[tuple[Path, str, Laterality | None]]:
    found: list[tuple[Path, str, Laterality | None]] = []
    dicom = SHARED_DATA / "dicom"
    for name in ("GH133.dcm", "OutOfBoundsOverlay.dcm", "MG1_J2KI.dcm", "MG1_JPLY.dcm",
                 "MG_Explicit_Little.dcm"):
        if (dicom / name).is_file():
            found.append((dicom / name, name, None))
    for name in ("mdb001.png", "mdb002.png"):
        if (SHARED_DATA / "mini-mias" / name).is_file():
            found.append((SHARED_DATA / "mini-mias" / name, name, None))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4096x3328", help="ROWSxCOLUMNS of the synthetic image")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows_, columns_ = (int(v) for v in args.size.lower().split("x"))
    warnings.filterwarnings("ignore", category=UserWarning)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, label in synthetic_files(Path(tmp), (rows_, columns_)):
            results.append(measure(path, label, args.repeat, Laterality.LEFT))
        for path, label, laterality in real_files():
            try:
                results.append(measure(path, label, args.repeat, laterality))
            except Exception as exc:
                print(f"  ({label}: {type(exc).__name__}: {str(exc)[:100]})")
    if args.json:
        print(json.dumps(results, indent=1))
        return
    header = f"{'file':<52} {'size':>10} {'MB':>5} {'decoder':>9} {'decode':>8} {'prep':>7} " \
             f"{'total':>8}  plugins (ms)"
    print(header)
    for r in results:
        plugins = ", ".join(f"{k} {v}" for k, v in r.get("plugins_ms", {}).items())
        print(f"{r['file'][:52]:<52} {r['size']:>10} {r['mbytes']:>5} {r['decoder']:>9} "
              f"{r['decode_ms']:>8} {r['preprocess_ms']:>7} {r['total_ms']:>8}  {plugins}")


if __name__ == "__main__":
    main()
