"""Drop-folder enqueue rate: how fast `mammo watch` registers and queues a burst of files.

    python tests/benchmarks/watch_enqueue.py --files 5000 [--broker redis://127.0.0.1:6379/9]
        [--database-url postgresql+psycopg://postgres@127.0.0.1/mammo_bench] [--json]

Writes N small synthetic DICOMs (96 x 80, distinct SOP Instance UIDs) into a fresh folder,
then runs the watcher's own steps in this process (start-up scan -> stability check with a
zero quiet period, which still parses every file completely -> registration -> messages)
until every file has a row and a message, and prints files/s and the peak RSS. Without
--broker the messages go to the in-memory transport (nothing consumes them); with it, to
Redis (the queue is left for you to flush). Classification is not part of this figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from producer.watch.service import Watcher, WatchOptions  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory  # noqa: E402
from shared.enums import Laterality, View  # noqa: E402
from shared.queue import create_celery_app  # noqa: E402
from shared.synthetic import synth_mammogram, write_dicom  # noqa: E402


def _write_files(folder: Path, n: int) -> None:
    pixels = synth_mammogram(np.random.default_rng(0), size=(96, 80))
    for i in range(n):
        write_dicom(folder / f"img{i:06d}.dcm", pixels, study_uid=f"1.2.826.0.1.99.{i // 4}",
                    sop_uid=f"1.2.826.0.1.99.{i // 4}.{i}", laterality=Laterality.LEFT,
                    view=View.CC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--broker", default=None)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "incoming"
        root.mkdir()
        _write_files(root, args.files)
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = Settings(database_url=url, broker_url=args.broker, watch_quiet_period_s=0.0,
                            patient_id_key="benchmark-key-0123456789abcdef", _env_file=None)  # type: ignore[call-arg]
        engine = create_db_engine(settings)
        ensure_schema(engine)
        sessions = make_session_factory(engine)
        watcher = Watcher(settings, sessions, create_celery_app(settings), WatchOptions(root))
        started = time.perf_counter()
        watcher.scan()
        watcher.queue_ready(threading.Event())
        seconds = time.perf_counter() - started
        engine.dispose()
    figures = {
        "files": args.files, "seconds": round(seconds, 2),
        "files_per_second": round(args.files / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "database": url.split(":", 1)[0], "broker": "redis" if args.broker else "memory",
        "python": platform.python_version(), "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
