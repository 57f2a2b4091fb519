"""What a decoder process is given against the host's limits: one BLAS thread (where
threads are limited, OpenBLAS could not start its second one and spun for ever at 100 %
CPU), and the first place in the OOM killer's queue (it took `mammo run` itself, with the
model, instead of the decoder whose death the pool survives)."""

from __future__ import annotations

import os
from pathlib import Path

from worker.decoding import ChunkDecoder


def test_a_decoder_runs_one_blas_thread_and_goes_first_on_oom() -> None:
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    decoder = ChunkDecoder(1)
    decoder.start()
    try:
        pool = decoder._ensure_pool()
        threads = [pool.submit(os.getenv, name).result(timeout=120)
                   for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")]
        adj = pool.submit(Path("/proc/self/oom_score_adj").read_text).result(timeout=120)
    finally:
        decoder.close()
    assert threads == ["1", "1"]
    assert adj.strip() == "1000"
    # Only the decoders: this process keeps its own settings.
    assert Path("/proc/self/oom_score_adj").read_text().strip() != "1000"
    assert os.environ.get("OPENBLAS_NUM_THREADS") == before
