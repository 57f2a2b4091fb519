"""`mammo worklist` (table and JSON) end to end, as a person runs it, on ~1,000 exams.

    nice -n 10 python tests/benchmarks/worklist_cli.py [--images 4000] [--sqlite]
        [--code DIR ...] [--runs 3] [--db-prefix mammo_bench_]

Seeds a fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards; --sqlite: a
file) with bulk inserts (tests/helpers/seed_results.py: 4-view studies, ~92% done, each
done image one prediction, its model one of two versions), gives the due exams their
results, leaves it unanalysed (as a database filled since autovacuum's last pass is), then
times each command in a fresh process (start-up included): the best of ``--runs``
wall-clock times, and the bytes printed (stdout). ``--code DIR``, repeated: run the
commands from each checkout in turn (a copy of the tree with files reverted, say) against
the same seeded database, for before/after figures in one sitting.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine  # noqa: E402

from shared.db.engine import ensure_schema, make_session_factory  # noqa: E402
from shared.exams import refresh_due_exams  # noqa: E402
from tests.helpers.seed_results import seed_results  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
COMMANDS = {"worklist (table)": ["worklist"],
            "worklist --format json": ["worklist", "--format", "json"],
            "--version": ["--version"]}
# Runs the CLI from the checkout in the working directory, not the installed one.
RUN_CLI = "import sys; sys.path.insert(0, '.'); from producer.cli import main; main()"


def _seed(url: str, n_images: int) -> int:
    engine = create_engine(url)
    ensure_schema(engine)
    seed_results(engine, n_images)
    with make_session_factory(engine)() as session:
        exams = len(refresh_due_exams(session, timeout_s=60))
        session.commit()
    engine.dispose()
    return exams


def _time(args: list[str], code: Path, env: dict[str, str], runs: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=code, env=env,
                              capture_output=True, check=True)
        best = min(best, time.perf_counter() - started)
        size = len(done.stdout)
    return best, size


def bench(url: str, n_images: int, codes: list[Path], runs: int, tmp: Path) -> None:
    started = time.perf_counter()
    exams = _seed(url, n_images)
    print(f"{n_images} images, {exams} exams with a result, seeded in "
          f"{time.perf_counter() - started:.1f} s")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")},
           "MAMMO_DATABASE_URL": url, "MAMMO_REPORT_DIR": str(tmp / "reports")}
    for name, args in COMMANDS.items():
        for code in codes:  # side by side: each checkout on the same database in turn
            best, size = _time(args, code, env, runs)
            print(f"  {name:<24} best of {runs}: {best:6.2f} s  {size / 1e6:6.2f} MB "
                  f"printed  ({code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--code", type=Path, action="append")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db-prefix", default="mammo_bench_")
    ns = parser.parse_args()
    codes = ns.code or [REPO]
    with tempfile.TemporaryDirectory() as tmp:
        if ns.sqlite:
            bench(f"sqlite:///{tmp}/bench.db", ns.images, codes, ns.runs, Path(tmp))
            return
        import psycopg

        name = f"{ns.db_prefix}{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            bench(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", ns.images,
                  codes, ns.runs, Path(tmp))
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
