"""Load: 10,000 tiny images through Redis, 2 `mammo worker` processes and PostgreSQL.

Every image must end done with exactly one prediction, and memory must stay flat: a
worker child's RSS after 10,000 images is compared with its RSS after the first 2,000.
Images are tiny (the tiny model's 96 x 80 input) so the test measures the pipeline's
bookkeeping, not convolution, and fits the CI budget.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.enums import Laterality
from shared.synthetic import synth_mammogram
from tests.helpers.db import tally
from tests.helpers.processes import (
    MAMMO,
    WorkerProcess,
    child_pids,
    mammo_env,
    peak_rss_mb,
    run_mammo,
    status_mb,
    wait_for,
)
from tests.helpers.reliability import Evidence
from tests.helpers.tiny_model import TINY_INPUT

pytestmark = pytest.mark.integration

N_IMAGES = 10_000
EARLY = 2_000
WORKERS = 2
CHUNK = 128  # tiny images cost little next to each task's claim, commit and ack
# Generous: allocator and TensorFlow caches settle after the first chunks; a leak of even
# 10 kB per image would add ~80 MB over the last 8,000 images and fail this.
MAX_GROWTH_MB = 60.0


def write_tiny_pngs(folder: Path, n: int) -> None:
    """``n`` distinct 16-bit PNGs (distinct bytes: identity is the content hash)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    bases = [synth_mammogram(rng, size=TINY_INPUT, laterality=lat).astype(np.uint16) << 4
             for lat in (Laterality.LEFT, Laterality.RIGHT)]
    for i in range(n):
        pixels = bases[i % 2].copy()
        pixels.flat[i // 2 % pixels.size] ^= 1 + i // (2 * pixels.size)  # one pixel differs
        ok, data = cv2.imencode(".png", pixels)
        assert ok
        (folder / f"img{i:05d}.png").write_bytes(data.tobytes())


def _worker_children(workers: list[WorkerProcess]) -> dict[int, list[int]]:
    return {w.proc.pid: child_pids(w.proc.pid) for w in workers}


@pytest.mark.timeout(900)
def test_ten_thousand_images_complete_once_with_flat_memory(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    started = time.monotonic()
    write_tiny_pngs(tmp_path / "in", N_IMAGES)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size=str(CHUNK))
    assert run_mammo(["db", "upgrade"], env, tmp_path).returncode == 0
    workers = [WorkerProcess(env, tmp_path, tmp_path / f"worker{i}.log", "--concurrency", "1")
               for i in range(WORKERS)]
    try:
        submit_started = time.monotonic()
        producer_peak, submitted = _submit_sampling_rss(tmp_path / "in", env, tmp_path)
        submit_s = time.monotonic() - submit_started
        assert submitted["queued"] == N_IMAGES, submitted
        wait_for(lambda: tally(postgres_url).done >= EARLY, timeout=300, what="2,000 done",
                 on_timeout=workers[0].log)
        children = _worker_children(workers)
        assert all(len(c) == 1 for c in children.values()), children
        early_rss = {pid: status_mb(kids[0], "VmRSS") for pid, kids in children.items()}
        wait_for(lambda: tally(postgres_url).terminal == N_IMAGES, timeout=900,
                 what="all 10,000 images", on_timeout=workers[0].log)
        processed_s = time.monotonic() - submit_started
        assert _worker_children(workers) == children, "a worker child died or was recycled"
        late_rss = {pid: status_mb(kids[0], "VmRSS") for pid, kids in children.items()}
        peaks = {pid: status_mb(kids[0], "VmHWM") for pid, kids in children.items()}
        parents = {pid: status_mb(pid, "VmHWM") for pid in children}
        decoders = [d for kids in children.values() for d in child_pids(kids[0])]
        decoder_peak = peak_rss_mb(decoders)
    finally:
        for worker in workers:
            worker.stop()
    t = tally(postgres_url)
    assert t.images == N_IMAGES and t.done == N_IMAGES, t
    assert t.predictions == N_IMAGES and t.max_predictions_per_image == 1, t
    growth = {pid: round(late_rss[pid] - early_rss[pid], 1) for pid in children}
    assert all(g <= MAX_GROWTH_MB for g in growth.values()), (early_rss, late_rss)
    reliability.fault(f"load: {N_IMAGES:,} images, {WORKERS} worker processes",
                      expected=N_IMAGES, tally=t)
    reliability.load(
        images=N_IMAGES, workers=WORKERS, chunk_size=CHUNK, image_size=list(TINY_INPUT),
        producer_peak_rss_mb=producer_peak,
        worker_child_peak_rss_mb=sorted(peaks.values()),
        worker_parent_peak_rss_mb=sorted(parents.values()),
        decoder_peak_rss_mb=decoder_peak, decoder_processes=len(decoders),
        worker_rss_at_2000_mb=sorted(early_rss.values()),
        worker_rss_at_10000_mb=sorted(late_rss.values()),
        max_growth_mb=max(growth.values()), growth_bound_mb=MAX_GROWTH_MB,
        submit_s=round(submit_s, 1), submit_to_done_s=round(processed_s, 1),
        test_wall_s=round(time.monotonic() - started, 1),
    )


def _submit_sampling_rss(folder: Path, env: dict[str, str], cwd: Path
                         ) -> tuple[float, dict[str, int]]:
    """Run `mammo submit`, sampling its peak RSS (VmHWM) until it exits."""
    producer = subprocess.Popen([*MAMMO, "submit", str(folder), "--json"], env=env, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while producer.poll() is None:
        peak = max(peak, status_mb(producer.pid, "VmHWM"))
        time.sleep(0.05)
    out, err = producer.communicate()
    assert producer.returncode == 0, err
    return peak, json.loads(out)
