"""Batched inference speed of a model (default: the shipped one), heatmaps included.

    python -m tests.benchmarks.inference [--model REF] [--images 64] [--batch 16] [--real]
                                         [--micro-batch 4 | --micro-batch 0,2,4,8] [--record]

Times (a) the classifier's forward passes alone over ready tensors (probabilities AND
heatmaps: the shipped model returns both from one call), and (b) decode + preprocess +
forward pass per image, over mini-MIAS PNGs when ``--real`` and ../shared/data is present,
else over synthetic 1024 x 1024 8-bit PNGs. Single process, whatever threads TensorFlow
takes on this machine, and the process's peak RSS. Several ``--micro-batch`` values are
measured one after another, each in a fresh process (a peak RSS is per process), and
printed side by side. Figures are printed, never asserted. ``--record`` also writes them
into the model's metadata.json (key ``benchmark``; the sha256 covers model.keras only) and
regenerates its MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.registry import resolve_model
from shared.config import Settings
from shared.imaging.preprocess import PREPROCESSING_VERSION, preprocess
from shared.imaging.readers import decode
from shared.synthetic import synth_mammogram, write_png
from worker.classifier import Classifier

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mini-mias"


def _inputs(n: int, real: bool, folder: Path) -> list[Path]:
    if real and SHARED_DATA.is_dir():
        return sorted(SHARED_DATA.glob("mdb*.png"))[:n]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = synth_mammogram(rng, (1024, 1024), bits=8)
        paths.append(write_png(folder / f"synthetic-{i:03d}.png", pixels))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--micro-batch", default=str(Settings.model_fields["micro_batch"].default),
                        help="images per sequential step (0: whole batch); a comma list "
                        "compares several")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if "," in args.micro_batch:
        _compare(args)
        return
    spec = resolve_model(args.model)
    classifier = Classifier(spec, batch_size=args.batch, micro_batch=int(args.micro_batch),
                            preprocessing_version=PREPROCESSING_VERSION)
    classifier.load()
    with tempfile.TemporaryDirectory() as tmp:
        paths = _inputs(args.images, args.real, Path(tmp))
        started = time.perf_counter()
        tensors = [preprocess(decode(p, max_pixels=80_000_000), spec.input_size)
                   for p in paths]
        prep_s = time.perf_counter() - started
    forward_s = 0.0
    for start in range(0, len(tensors), args.batch):
        batch = np.stack(tensors[start:start + args.batch])
        t0 = time.perf_counter()
        result = classifier.predict(batch)
        forward_s += time.perf_counter() - t0
        assert result.heatmaps is not None
    n = len(tensors)
    figures = {
        "model": f"{spec.name} {spec.version}", "images": n, "batch": args.batch,
        "micro_batch": classifier.micro_batch,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "forward_images_per_s": round(n / forward_s, 2),
        "decode_preprocess_ms_per_image": round(1000 * prep_s / n, 1),
        "end_to_end_images_per_s": round(n / (forward_s + prep_s), 2),
        "inputs": "mini-MIAS PNG" if args.real and SHARED_DATA.is_dir() else "synthetic PNG",
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in
                                                           figures.items()))
    if args.record:
        _record(spec.directory, figures, args)


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return round(int(kb) / 1024, 1)


def _compare(args: argparse.Namespace) -> None:
    rows = []
    for value in args.micro_batch.split(","):
        command = [sys.executable, "-m", "tests.benchmarks.inference", "--json",
                   "--model", args.model, "--images", str(args.images),
                   "--batch", str(args.batch), "--micro-batch", value.strip()]
        out = subprocess.run(command + (["--real"] if args.real else []), check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{rows[0]['model']}, batch {args.batch}, {rows[0]['inputs']}, "
          f"{rows[0]['cpu_cores']} CPU cores")
    print("micro-batch | forward img/s | peak RSS MB")
    for row in rows:
        print(f"{row['micro_batch'] or 'whole'} | {row['forward_images_per_s']} | "
              f"{row['peak_rss_mb']}")


def _record(directory: Path, figures: dict[str, object], args: argparse.Namespace) -> None:
    from models.model_card import record_in_metadata

    command = "python -m tests.benchmarks.inference" + (" --real" if args.real else "")
    record_in_metadata(directory, "benchmark", {
        "images_per_s": figures["end_to_end_images_per_s"],
        "forward_images_per_s": figures["forward_images_per_s"],
        "machine": f"{figures['cpu_cores']} CPU cores, batch {args.batch}, "
                   f"decode + preprocess + forward pass with heatmaps, {figures['inputs']}",
        "command": command,
    })


if __name__ == "__main__":
    main()
