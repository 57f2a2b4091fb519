"""Query times on 100,000 stored predictions: `mammo results` filters, worklist, stats.

    nice -n 10 python tests/benchmarks/results_query.py [--images 110000] [--postgres] [--json]

Seeds a fresh SQLite file (and, with --postgres, a fresh database on 127.0.0.1:5432 that is
dropped afterwards) with bulk inserts (tests/helpers/seed_results.py: 4-view studies, ~92%
done with one prediction each, 5% failed, 3% queued, 10 batches over 30 days), then times
each typical query as the CLI runs it (list_results / worklist_rows / collect_stats, rows
built in Python included): the best of 3 runs, after one warm-up, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shared.config import Settings  # noqa: E402
from shared.db.engine import ensure_schema, make_session_factory  # noqa: E402
from shared.exams import refresh_due_exams  # noqa: E402
from shared.queries import ResultFilter, batch_status, list_results  # noqa: E402
from shared.reports.stats import StatsFilter, collect_stats  # noqa: E402
from shared.reports.worklist import WorklistFilter, worklist_rows  # noqa: E402
from tests.helpers.seed_results import START, seed_results  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _queries(settings: Settings, report_dir: Path) -> dict[str, Callable[[Session], int]]:
    def results(**kw: Any) -> Callable[[Session], int]:
        return lambda s: len(list_results(s, ResultFilter(**kw)))

    day = START + timedelta(days=12)
    return {
        "results --batch 3 --limit 1000": results(batch_id=3, limit=1000),
        "results --batch 3 (all ~11k rows)": results(batch_id=3),
        "results --study UID": results(study_uid="1.2.3.12345"),
        "results --patient PSEUDONYM": results(patient_pseudonym="pseudo-007"),
        "results --label malignant --min-score 8 --limit 1000":
            results(label="malignant", min_suspicion=8, limit=1000),
        "results --state failed": results(state="failed"),
        "results --since D --until D+1 day": results(since=day, until=day + timedelta(days=1)),
        "results --model-version 1.1.0 --limit 1000": results(model_version="1.1.0",
                                                               limit=1000),
        "results --limit 1000 --offset 100000": results(limit=1000, offset=100_000),
        "results (everything, export)": results(),
        "worklist --limit 100": lambda s: len(worklist_rows(
            s, WorklistFilter(limit=100), report_dir=report_dir)),
        "worklist --batch 3": lambda s: len(worklist_rows(
            s, WorklistFilter(batch_id=3), report_dir=report_dir)),
        # Counts, pace and the models behind a batch's results (`mammo status 3`).
        "status 3": lambda s: getattr(batch_status(s, 3), "total", 0),
        "stats": lambda s: len(collect_stats(s, settings, StatsFilter())),
        "stats --batch 3": lambda s: len(collect_stats(s, settings, StatsFilter(batch_id=3))),
    }


def _best_ms(engine: Engine, query: Callable[[Session], int]) -> tuple[float, int]:
    sessions = make_session_factory(engine)
    with sessions() as session:
        rows = query(session)  # warm-up: caches, statement compilation
    times = []
    for _ in range(3):
        with sessions() as session:
            started = time.perf_counter()
            query(session)
            times.append((time.perf_counter() - started) * 1000)
    return min(times), rows


def bench(url: str, n_images: int, tmp: Path) -> dict[str, Any]:
    engine = create_engine(url)
    ensure_schema(engine)
    started = time.perf_counter()
    seeded = seed_results(engine, n_images)
    seed_s = time.perf_counter() - started
    settings = Settings(database_url=url, model="default", report_dir=tmp / "reports",
                        _env_file=None)  # type: ignore[call-arg]
    with make_session_factory(engine)() as session:
        started = time.perf_counter()
        refreshed = len(refresh_due_exams(session, timeout_s=settings.exam_timeout_s))
        refresh_s = time.perf_counter() - started
    figures = {name: _best_ms(engine, q) for name, q in _queries(settings, tmp).items()}
    engine.dispose()
    return {"backend": engine.dialect.name, "images": n_images,
            "predictions": len(seeded.predictions), "seed_s": round(seed_s, 1),
            "first_exam_refresh_s": round(refresh_s, 1), "exams_refreshed": refreshed,
            "queries_ms": {k: {"best_ms": round(ms, 1), "rows": rows}
                           for k, (ms, rows) in figures.items()}}


def _postgres(n_images: int, tmp: Path) -> dict[str, Any]:
    import psycopg

    name = f"mammo_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return bench(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", n_images, tmp)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _print(report: dict[str, Any]) -> None:
    print(f"\n{report['backend']}: {report['images']} images, {report['predictions']} "
          f"predictions (seeded in {report['seed_s']} s; first exam refresh "
          f"{report['first_exam_refresh_s']} s for {report['exams_refreshed']} exams)")
    for name, figure in report["queries_ms"].items():
        print(f"  {figure['best_ms']:9.1f} ms  {figure['rows']:>7} rows  {name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 110,000 images give about 101,000 predictions (92% done).
    parser.add_argument("--images", type=int, default=110_000)
    parser.add_argument("--postgres", action="store_true", help="also on 127.0.0.1:5432")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = [lambda: bench(f"sqlite:///{tmp / 'bench.db'}", args.images, tmp)]
        if args.postgres:
            runs.append(lambda: _postgres(args.images, tmp))
        for run in runs:
            reports.append(run())
            if not args.json:
                _print(reports[-1])
    if args.json:
        print(json.dumps({"machine": platform.machine(), "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
