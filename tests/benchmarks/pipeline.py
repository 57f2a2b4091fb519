"""End-to-end throughput against the raw model, measured side by side in one run.

    nice -n 5 python tests/benchmarks/pipeline.py [--images 64] [--compressed-images 32]
        [--kinds uncompressed,jpeg-lossless] [--real 64] [--chunk 16] [--model DIR] [--json]

(a) raw model: batched forward passes over ready tensors (the shipped model by default);
(b) serial: decode, preprocess, infer and write PostgreSQL in a plain in-process loop,
    one image after another (``worker.pipeline.process_chunk``, same chunk size, no
    decoder processes);
(c) end to end: `mammo submit` -> Redis -> `mammo worker` (1, then 2 processes) ->
    PostgreSQL, from the batch row's creation (first submit) to the last image finished,
    both read from the database; the submit process's own start-up is reported apart.

Per input kind: full-size 12-bit synthetic DICOMs (--size, default 4096x3328) uncompressed
and compressed (JPEG lossless by default; jpeg2000 on request), plus the real files in
../shared/data when present. Stage times (decode / preprocess / infer) are the ones the
pipeline stores with each prediction; "db" is what the serial loop's wall time leaves.
Cold start: a worker launched with one image waiting, until that prediction is written.
Enqueue rate: `mammo submit` of --enqueue-files header-only DICOMs. Needs Redis and
PostgreSQL on 127.0.0.1, as the integration tests do. Figures are printed, never asserted.
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
from producer.registration import create_batch, ingestion_for, register_files  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory  # noqa: E402
from shared.db.schema import Batch, Image, Prediction  # noqa: E402
from shared.enums import Priority  # noqa: E402
from tests.benchmarks.pipeline_inputs import header_only_set, real_set, synthetic_set  # noqa: E402
from tests.helpers.processes import (  # noqa: E402
    MAMMO,
    WorkerProcess,
    mammo_env,
    peak_rss_mb,
    run_mammo,
)

KEY = "benchmark-key-0123456789abcdef"  # real files may carry a PatientID
REDIS_DB = 13  # leased in db 0 (as tests/conftest.py does) for the whole run
WORKER_SETTINGS: dict[str, Any] = {}  # --decode-processes / --tf-threads / --micro-batch


def _pg_url() -> str:
    import psycopg

    name = f"mammo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop(url: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def raw_model(settings: Settings, paths: list[Path]) -> float:
    from shared.imaging.model_input import ModelInputSource, load_model_input
    from worker.runtime import WorkerRuntime

    clf = WorkerRuntime(settings).classifier
    first = load_model_input(ModelInputSource(str(paths[0]), None, None, clf.input_size,
                                              settings.max_image_pixels))
    batch = np.stack([first.tensor] * settings.chunk_size)
    clf.predict(batch)
    rounds = max(3, len(paths) // settings.chunk_size)
    started = time.perf_counter()
    for _ in range(rounds):
        clf.predict(batch)
    return rounds * settings.chunk_size / (time.perf_counter() - started)


def serial(settings: Settings, paths: list[Path]) -> dict[str, Any]:
    from worker.pipeline import process_chunk
    from worker.runtime import WorkerRuntime

    settings = settings.model_copy(update={"database_url": _pg_url(), "decode_processes": 0})
    engine = create_db_engine(settings)
    ensure_schema(engine)
    sessions = make_session_factory(engine)
    batch = create_batch(sessions, name="bench-serial", priority=Priority.ROUTINE, mode="bench")
    ids = register_files(sessions, batch, paths, ingestion=ingestion_for(settings)).new_ids
    runtime = WorkerRuntime(settings)
    runtime.classifier.load()
    started = time.perf_counter()
    for i in range(0, len(ids), settings.chunk_size):
        process_chunk(ids[i:i + settings.chunk_size], token=str(uuid.uuid4()), runtime=runtime)
    seconds = time.perf_counter() - started
    stages = _stored_stages(engine, batch)
    stages["db"] = round(max(0.0, 1000 * seconds / len(ids) - sum(stages.values())), 1)
    engine.dispose()
    _drop(settings.database_url)
    return {"ips": len(ids) / seconds, "stage_ms": stages}


def _stored_stages(engine: Any, batch: int) -> dict[str, float]:
    with engine.connect() as conn:
        row = conn.execute(
            select(func.avg(Prediction.decode_ms), func.avg(Prediction.preprocess_ms),
                   func.avg(Prediction.infer_ms))
            .join(Image, Image.id == Prediction.image_id).where(Image.batch_id == batch)).one()
    return {name: round(float(v or 0.0), 1)
            for name, v in zip(("decode", "preprocess", "infer"), row, strict=True)}


class Stack:
    """A fresh PostgreSQL database, a flushed Redis db, and `mammo` environment for them."""

    def __init__(self, model: str, chunk: int, tmp: Path) -> None:
        self.url = _pg_url()
        broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
        subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], check=True,
                       capture_output=True)
        self.env = mammo_env(broker_url=broker, database_url=self.url, model=model,
                             chunk_size=str(chunk), log_level="INFO", patient_id_key=KEY,
                             sweep_interval_s="0", **WORKER_SETTINGS)
        self.tmp = tmp
        done = run_mammo(["db", "upgrade"], self.env, tmp)
        if done.returncode:
            raise RuntimeError(done.stderr)
        self.engine = create_engine(self.url)

    def submit(self, paths: list[Path]) -> dict[str, Any]:
        launched = time.time()
        proc = subprocess.Popen([*MAMMO, "submit", *map(str, paths), "--json"], env=self.env,
                                cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        rss = 0.0
        while proc.poll() is None:  # sampled: ru_maxrss would carry this process's peak
            rss = max(rss, peak_rss_mb([proc.pid]))
            time.sleep(0.02)
        if proc.returncode not in (0, 3):  # 3: some files failed at intake (real data)
            raise RuntimeError(f"mammo submit failed with {proc.returncode}")
        assert proc.stdout is not None
        out = json.loads(proc.stdout.read())
        out.update(launched=launched, wall_s=time.time() - launched, peak_rss_mb=rss)
        return dict(out)

    def wait_finished(self, batch: int, n: int, timeout: float = 1800) -> tuple[float, float]:
        """(batch created, last image finished) as epoch seconds, once all n finished."""
        started = time.perf_counter()
        while True:
            with self.engine.connect() as conn:
                done, last = conn.execute(
                    select(func.count(), func.max(Image.finished_at))
                    .where(Image.batch_id == batch, Image.state.in_(("done", "failed")))).one()
                created = conn.execute(select(Batch.created_at).where(Batch.id == batch))
                created_at = created.scalar_one()
            if done >= n:
                return created_at.timestamp(), last.timestamp()
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"only {done}/{n} images finished in {timeout:.0f} s")
            time.sleep(0.1)

    def close(self) -> None:
        self.engine.dispose()
        _drop(self.url)


def end_to_end(model: str, chunk: int, paths: list[Path], workers: int,
               tmp: Path) -> dict[str, Any]:
    stack = Stack(model, chunk, tmp)
    worker = WorkerProcess(stack.env, tmp, tmp / f"worker{workers}.log",
                           "--concurrency", str(workers))
    try:
        _wait_ready(worker, workers)  # throughput is timed from a warm worker
        sent = stack.submit(paths)
        created, last = stack.wait_finished(sent["batch_id"], len(paths))
        seconds = last - created
        tree = _descendants(worker.proc.pid)
        with stack.engine.connect() as conn:
            failed = conn.execute(select(func.count()).where(
                Image.batch_id == sent["batch_id"], Image.state == "failed")).scalar_one()
        return {
            "ips": len(paths) / seconds, "seconds": round(seconds, 2),
            "ips_incl_submit_startup": len(paths) / (last - sent["launched"]),
            "submit_startup_s": round(created - sent["launched"], 2), "failed": failed,
            "stage_ms": _stored_stages(stack.engine, sent["batch_id"]),
            "worker_peak_rss_mb": peak_rss_mb(tree["model"]),
            "decoder_peak_rss_mb": peak_rss_mb(tree["decoders"]),
            "producer_peak_rss_mb": sent["peak_rss_mb"],
        }
    finally:
        worker.stop()
        stack.close()


def cold_start(model: str, chunk: int, path: Path, tmp: Path) -> float:
    """Seconds from `mammo worker` launch, with one image waiting, to its prediction."""
    stack = Stack(model, chunk, tmp)
    sent = stack.submit([path])
    launched = time.time()
    worker = WorkerProcess(stack.env, tmp, tmp / "cold.log", "--concurrency", "1")
    try:
        _created, last = stack.wait_finished(sent["batch_id"], 1, timeout=300)
        return round(last - launched, 1)
    finally:
        worker.stop()
        stack.close()


def enqueue_rate(model: str, chunk: int, n: int, tmp: Path) -> dict[str, Any]:
    paths = header_only_set(tmp / "headers", n)
    stack = Stack(model, chunk, tmp)
    try:
        sent = stack.submit([tmp / "headers"])
    finally:
        stack.close()
        subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], capture_output=True,
                       check=False)
    return {"files": len(paths), "enqueue_fps": sent["files_per_s"],
            "enqueue_fps_incl_startup": round(len(paths) / sent["wall_s"], 1),
            "producer_peak_rss_mb": sent["peak_rss_mb"]}


def _wait_ready(worker: WorkerProcess, expected: int) -> None:
    started = time.perf_counter()
    while worker.log().count("loaded in") < expected:
        if worker.proc.poll() is not None or time.perf_counter() - started > 300:
            raise RuntimeError(f"worker did not start:\n{worker.log()}")
        time.sleep(0.1)


def _descendants(pid: int) -> dict[str, list[int]]:
    """The worker's model processes (its prefork children) and everything below them."""
    def children(p: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True,
                             check=False)
        return [int(c) for c in out.stdout.split()]

    model = children(pid)
    below, todo = [], [c for m in model for c in children(m)]
    while todo:
        below.append(todo.pop())
        todo.extend(children(below[-1]))
    return {"model": [pid, *model], "decoders": below}


def measure_kind(args: argparse.Namespace, settings: Settings, paths: list[Path],
                 tmp: Path) -> dict[str, Any]:
    b = serial(settings, paths)
    _progress(f"{len(paths)} images: serial {b['ips']:.2f} img/s")
    c = {}
    for w in args.workers:
        c[w] = end_to_end(settings.model, args.chunk, paths, w, tmp)
        _progress(f"  e2e with {w} worker process(es): {c[w]['ips']:.2f} img/s")
    one = c[args.workers[0]]
    return {
        "images": len(paths), "serial_ips": round(b["ips"], 2),
        "e2e_ips": round(one["ips"], 2), "e2e_over_serial": round(one["ips"] / b["ips"], 3),
        "stage_ms": b["stage_ms"], "e2e": {str(w): _rounded(v) for w, v in c.items()},
    }


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows, cols = (int(v) for v in args.size.lower().split("x"))
    spec = resolve_model(args.model or Settings().model)
    with tempfile.TemporaryDirectory(prefix="mammo-bench-") as name:
        tmp = Path(name)
        settings = Settings(model=str(spec.directory), chunk_size=args.chunk,
                            patient_id_key=KEY, _env_file=None, **WORKER_SETTINGS)  # type: ignore[call-arg]
        sets: dict[str, list[Path]] = {}
        for kind in args.kinds:
            n = args.images if kind == "uncompressed" else args.compressed_images
            sets[kind] = synthetic_set(tmp / kind, n, (rows, cols), kind)
        if args.real and real_set(args.real):
            sets["real"] = real_set(args.real)
        raw = raw_model(settings, sets[args.kinds[0]])
        _progress(f"raw model {raw:.2f} img/s")
        kinds = {kind: measure_kind(args, settings, paths, tmp) for kind, paths in sets.items()}
        cold = cold_start(str(spec.directory), args.chunk, sets[args.kinds[0]][0], tmp)
        enqueue = enqueue_rate(str(spec.directory), args.chunk, args.enqueue_files, tmp)
    return _summary(args, spec, settings.micro_batch, raw, kinds, cold, enqueue)


def _summary(args: argparse.Namespace, spec: Any, micro_batch: int, raw: float,
             kinds: dict[str, Any], cold: float, enqueue: dict[str, Any]) -> dict[str, Any]:
    for row in kinds.values():
        row["e2e_over_raw"] = round(row["e2e_ips"] / raw, 3)
    main = kinds[args.kinds[0]]
    e2e_runs = [run for row in kinds.values() for run in row["e2e"].values()]
    return {
        "raw_ips": round(raw, 2), "serial_ips": main["serial_ips"], "e2e_ips": main["e2e_ips"],
        "e2e_over_serial": main["e2e_over_serial"], "e2e_over_raw": main["e2e_over_raw"],
        "stage_ms": main["stage_ms"],
        "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] for r in e2e_runs),
        "decoder_peak_rss_mb": max(r["decoder_peak_rss_mb"] for r in e2e_runs),
        "producer_peak_rss_mb": max(enqueue["producer_peak_rss_mb"],
                                    *(r["producer_peak_rss_mb"] for r in e2e_runs)),
        "cold_start_s": cold, "enqueue_fps": enqueue["enqueue_fps"], "enqueue": enqueue,
        "kinds": kinds,
        "machine": f"{platform.node()} {platform.machine()} "
                   f"{len(os.sched_getaffinity(0))} cpu, load {os.getloadavg()[0]:.1f}",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": f"{spec.name}:{spec.version}", "size": args.size, "chunk": args.chunk,
        "micro_batch": micro_batch,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['date']}  {result['machine']}  model {result['model']}  "
          f"chunk {result['chunk']} (micro-batch {result['micro_batch']})  "
          f"size {result['size']}")
    print(f"(a) raw model {result['raw_ips']} img/s; cold start {result['cold_start_s']} s; "
          f"enqueue {result['enqueue_fps']} files/s "
          f"({result['enqueue']['enqueue_fps_incl_startup']} incl. process start-up); "
          f"peak RSS worker {result['worker_peak_rss_mb']} MB, decoder "
          f"{result['decoder_peak_rss_mb']} MB, producer {result['producer_peak_rss_mb']} MB")
    head = f"{'input':<14}{'n':>5}{'(b)':>8}{'(c) 1w':>8}{'(c) 2w':>8}{'c/b':>7}{'c/a':>7}"
    print(head + "   stored ms decode/preprocess/infer (serial | e2e)  submit start-up")
    for kind, row in result["kinds"].items():
        e2e = row["e2e"]
        two = e2e.get("2", {}).get("ips", float("nan"))
        s, e = row["stage_ms"], e2e[next(iter(e2e))]["stage_ms"]
        print(f"{kind:<14}{row['images']:>5}{row['serial_ips']:>8.2f}{row['e2e_ips']:>8.2f}"
              f"{two:>8.2f}{row['e2e_over_serial']:>7.2f}{row['e2e_over_raw']:>7.2f}   "
              f"{s['decode']:.0f}/{s['preprocess']:.0f}/{s['infer']:.0f} db {s['db']:.0f} | "
              f"{e['decode']:.0f}/{e['preprocess']:.0f}/{e['infer']:.0f}"
              f"  {e2e[next(iter(e2e))]['submit_startup_s']} s")


def _lease_redis_db() -> str:
    """Claim a Redis db number the tests' lease honours, so no test worker eats our work."""
    import redis

    global REDIS_DB  # noqa: PLW0603 - one run, one database number
    lease, token = redis.Redis(db=0), uuid.uuid4().hex
    for db in range(15, 0, -1):
        if lease.set(f"mammo-test-db:{db}", token, nx=True, ex=7200):
            REDIS_DB = db
            return f"mammo-test-db:{db}"
    raise RuntimeError("no free Redis database number (1-15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="uncompressed synthetic files")
    parser.add_argument("--compressed-images", type=int, default=32)
    parser.add_argument("--kinds", default="uncompressed,jpeg-lossless",
                        help="comma list of: uncompressed, jpeg-lossless, jpeg2000")
    parser.add_argument("--real", type=int, default=64,
                        help="real files from ../shared/data (0: none)")
    parser.add_argument("--size", default="4096x3328", help="rows x columns of each image")
    parser.add_argument("--model", default=None, help="model dir [default: MAMMO_MODEL]")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="worker processes to compare")
    parser.add_argument("--enqueue-files", type=int, default=2000)
    parser.add_argument("--decode-processes", default=None,
                        help="MAMMO_DECODE_PROCESSES for the workers [default: the setting's]")
    parser.add_argument("--tf-threads", default=None, metavar="INTRA,INTER",
                        help="MAMMO_TF_INTRA_OP_THREADS,MAMMO_TF_INTER_OP_THREADS for workers")
    parser.add_argument("--micro-batch", default=None,
                        help="MAMMO_MICRO_BATCH for (a), (b) and the workers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.micro_batch is not None:
        WORKER_SETTINGS["micro_batch"] = args.micro_batch
    if args.decode_processes is not None:
        WORKER_SETTINGS["decode_processes"] = args.decode_processes
    if args.tf_threads:
        intra, inter = args.tf_threads.split(",")
        WORKER_SETTINGS.update(tf_intra_op_threads=intra, tf_inter_op_threads=inter)
    args.kinds = args.kinds.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    lease = _lease_redis_db()
    try:
        result = run(args)
    finally:
        subprocess.run(["redis-cli", "-n", "0", "del", lease], capture_output=True, check=False)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
