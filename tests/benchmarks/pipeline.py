"""End-to-end throughput against the raw model, measured side by side in one run.

    python tests/benchmarks/pipeline.py --images 64 [--model DIR] [--json]

(a) raw model: batched forward passes over ready tensors;
(b) serial: decode, preprocess, infer and write the database in a plain in-process loop
    (worker.pipeline.process_chunk called directly, same chunk size);
(c) end to end: `mammo submit` -> Redis -> `mammo worker` process(es) -> PostgreSQL, from
    the first submit to the last committed prediction; with 1 and 2 worker processes.

Needs Redis and PostgreSQL on 127.0.0.1 (as the integration tests do). Inputs are
synthesised full-size 12-bit DICOMs (uncompressed). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, func, select

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from models.registry import resolve_model  # noqa: E402
from producer.registration import create_batch, register_files  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory  # noqa: E402
from shared.db.schema import Image, Prediction  # noqa: E402
from shared.enums import Laterality, Priority, View  # noqa: E402
from shared.imaging.preprocess import preprocess  # noqa: E402
from shared.imaging.readers import decode  # noqa: E402
from shared.synthetic import synth_mammogram, write_dicom  # noqa: E402
from tests.helpers.processes import (  # noqa: E402
    MAMMO,
    WorkerProcess,
    child_pids,
    mammo_env,
    peak_rss_mb,
    run_mammo,
)


def make_inputs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    base = synth_mammogram(rng, size=size, laterality=Laterality.LEFT)
    paths = []
    for i in range(n):
        # Distinct bytes and UIDs per file, without paying for n full syntheses.
        pixels = np.roll(base, i, axis=0)
        path = folder / f"img{i:05d}.dcm"
        write_dicom(path, pixels, study_uid=f"1.2.826.0.1.3680043.9.7.{i // 4 + 1}",
                    sop_uid=f"1.2.826.0.1.3680043.9.8.{i + 1}", laterality=Laterality.LEFT,
                    view=View.CC)
        paths.append(path)
    return paths


def raw_model(settings: Settings, paths: list[Path]) -> float:
    from worker.runtime import WorkerRuntime

    runtime = WorkerRuntime(settings)
    clf = runtime.classifier
    tensor = preprocess(decode(paths[0], max_pixels=settings.max_image_pixels), clf.input_size)
    batch = np.stack([tensor] * settings.chunk_size)
    clf.predict(batch)
    rounds = max(2, len(paths) // settings.chunk_size)
    started = time.perf_counter()
    for _ in range(rounds):
        clf.predict(batch)
    return rounds * settings.chunk_size / (time.perf_counter() - started)


def serial(settings: Settings, paths: list[Path]) -> tuple[float, dict[str, float]]:
    from worker.pipeline import process_chunk
    from worker.runtime import WorkerRuntime

    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="bench-serial", priority=Priority.ROUTINE, mode="bench")
    ids = register_files(sessions, batch, paths).new_ids
    runtime = WorkerRuntime(settings)
    runtime.classifier.load()
    started = time.perf_counter()
    for i in range(0, len(ids), settings.chunk_size):
        process_chunk(ids[i:i + settings.chunk_size], token=str(uuid.uuid4()), runtime=runtime)
    rate = len(ids) / (time.perf_counter() - started)
    with sessions() as s:
        row = s.execute(select(func.avg(Prediction.decode_ms), func.avg(Prediction.preprocess_ms),
                               func.avg(Prediction.infer_ms))).one()
    stages = {"decode": row[0], "preprocess": row[1], "infer": row[2],
              "db": max(0.0, 1000 / rate - sum(float(v) for v in row))}
    return rate, {k: round(float(v), 1) for k, v in stages.items()}


def _pg_database(admin_url: str) -> str:
    import psycopg

    name = f"mammo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def end_to_end(model: str, folder: Path, n: int, workers: int, chunk: int,
               redis_db: int) -> dict[str, Any]:
    url = _pg_database("host=127.0.0.1 user=postgres dbname=postgres")
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=True,
                   capture_output=True)
    env = mammo_env(broker_url=broker, database_url=url, model=model, chunk_size=str(chunk),
                    log_level="INFO")
    run_mammo(["db", "upgrade"], env, folder.parent)
    worker_started = time.perf_counter()
    worker = WorkerProcess(env, folder.parent, folder.parent / f"worker{workers}.log",
                           "--concurrency", str(workers))
    engine = create_engine(url)
    try:
        # Cold start is reported on its own; throughput is timed from a warm worker.
        cold_start = _wait_ready(worker, worker_started, workers)
        submit_started = time.perf_counter()
        producer = subprocess.Popen([*MAMMO, "submit", str(folder), "--json"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
        # ru_maxrss would carry this benchmark's own (TensorFlow-sized) peak across the
        # fork+exec, so sample the producer's VmHWM while it runs instead.
        producer_rss = 0.0
        while producer.poll() is None:
            producer_rss = max(producer_rss, peak_rss_mb([producer.pid]))
            time.sleep(0.05)
        if producer.returncode:
            raise RuntimeError(f"mammo submit failed with {producer.returncode}")
        assert producer.stdout is not None
        submitted = json.loads(producer.stdout.read())
        batch = submitted["batch_id"]
        while True:
            with engine.connect() as conn:
                done = conn.execute(
                    select(func.count()).select_from(Prediction)
                    .join(Image, Image.id == Prediction.image_id)
                    .where(Image.batch_id == batch)).scalar_one()
            if done >= n:
                break
            if time.perf_counter() - submit_started > 1800:
                raise RuntimeError("end-to-end run did not finish in 30 min")
            time.sleep(0.2)
        elapsed = time.perf_counter() - submit_started
        rss = peak_rss_mb([worker.proc.pid, *child_pids(worker.proc.pid)])
    finally:
        worker.stop()
        engine.dispose()
    return {"ips": n / elapsed, "enqueue_fps": submitted["files_per_s"],
            "producer_peak_rss_mb": producer_rss,
            "worker_peak_rss_mb": rss, "cold_start_s": cold_start}


def _wait_ready(worker: WorkerProcess, started: float, expected: int) -> float:
    """Seconds until every child has logged that its model is loaded."""
    while worker.log().count("loaded in") < expected:
        if worker.proc.poll() is not None or time.perf_counter() - started > 300:
            raise RuntimeError(f"worker did not start:\n{worker.log()}")
        time.sleep(0.1)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", default="4096x3328", help="rows x columns of each image")
    parser.add_argument("--model", default=None, help="model dir [default: MAMMO_MODEL]")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.size.lower().split("x"))
    model = args.model or Settings().model
    spec = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="mammo-bench-") as tmp:
        folder = Path(tmp) / "in"
        paths = make_inputs(folder, args.images, (rows, cols))
        settings = Settings(database_url=f"sqlite:///{tmp}/serial.db", model=str(spec.directory),
                            chunk_size=args.chunk, _env_file=None)  # type: ignore[call-arg]
        raw = raw_model(settings, paths)
        serial_ips, stages = serial(settings, paths)
        e2e = {w: end_to_end(str(spec.directory), folder, args.images, w, args.chunk, 13 + w)
               for w in (1, 2)}
    one = e2e[1]
    result = {
        "raw_ips": round(raw, 2), "serial_ips": round(serial_ips, 2),
        "e2e_ips": round(one["ips"], 2), "e2e_2_workers_ips": round(e2e[2]["ips"], 2),
        "e2e_over_serial": round(one["ips"] / serial_ips, 3),
        "e2e_over_raw": round(one["ips"] / raw, 3), "stage_ms": stages,
        "worker_peak_rss_mb": max(one["worker_peak_rss_mb"], e2e[2]["worker_peak_rss_mb"]),
        "producer_peak_rss_mb": one["producer_peak_rss_mb"], "cold_start_s": one["cold_start_s"],
        "enqueue_fps": round(one["enqueue_fps"], 1),
        "machine": f"{platform.node()} {platform.machine()} {_cpus()} cpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": f"{spec.name}:{spec.version}", "images": args.images, "size": args.size,
        "chunk": args.chunk,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>22}: {value}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
