"""CPU time and size of one exam PDF, the closing phase of `mammo run` (one PDF per exam).

Runs ``--exams`` synthetic 4-view exams through the embedded pipeline with the configured
model (the shipped default unless ``--model``), then writes every exam's PDF ``--repeat``
times and prints, per PDF: the CPU seconds (median), the part of them spent drawing the
view thumbnails (decode, preprocess, heatmap overlay, encoding), and the file's size.
``--database`` reuses a database such a run left (no model load), to compare two versions
of the report code on the same results. Usage:

    python -m tests.benchmarks.exam_pdf [--exams 4] [--repeat 3] [--model DIR]
    python -m tests.benchmarks.exam_pdf --database sqlite:////tmp/bench/m.db
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Study
from shared.reports import view_images
from shared.reports.exam_reports import write_exam_report


def _settings(database_url: str, report_dir: Path, model: str | None) -> Settings:
    extra: dict[str, Any] = {"model": model} if model else {}
    return Settings(database_url=database_url, broker_url=None, report_dir=report_dir,
                    _env_file=None, **extra)  # type: ignore[call-arg]


def _processed_database(folder: Path, exams: int, model: str | None) -> str:
    from producer.embedded_run import run_embedded
    from shared.synthetic import make_exam_set

    url = f"sqlite:///{folder / 'm.db'}"
    settings = _settings(url, folder / "reports", model)
    engine = create_db_engine(settings)
    ensure_schema(engine)
    make_exam_set(folder / "data", n_exams=exams, seed=1)
    run_embedded(settings, make_session_factory(engine), [folder / "data"], name="bench")
    engine.dispose()
    return url


class _ThumbnailClock:
    """CPU seconds spent in ``view_images.thumbnail`` while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real: Callable[..., Any] = view_images.thumbnail

    def __enter__(self) -> _ThumbnailClock:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return self._real(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - started

        # exam_pdf imported the name itself: patch it there, where it is called.
        from shared.reports import exam_pdf

        exam_pdf.thumbnail = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *_: object) -> None:
        from shared.reports import exam_pdf

        exam_pdf.thumbnail = self._real  # type: ignore[assignment]


def _measure(database_url: str, out: Path, repeat: int) -> None:
    settings = _settings(database_url, out, None)
    engine = create_db_engine(settings)
    sessions = make_session_factory(engine)
    cpu, thumbs, sizes = [], [], []
    with sessions() as session:
        uids = session.execute(select(Study.study_uid).order_by(Study.id)).scalars().all()
        write_exam_report(session, uids[0], out / "warm-up.pdf", "pdf", settings)
        for _ in range(repeat):
            for n, uid in enumerate(uids):
                path = out / f"exam-{n}.pdf"
                with _ThumbnailClock() as clock:
                    started = time.process_time()
                    write_exam_report(session, uid, path, "pdf", settings)
                    cpu.append(time.process_time() - started)
                thumbs.append(clock.seconds)
                sizes.append(path.stat().st_size)
    engine.dispose()
    print(f"{len(uids)} exam(s) x {repeat}: CPU per exam PDF median "
          f"{statistics.median(cpu):.3f} s (min {min(cpu):.3f}, max {max(cpu):.3f}), of "
          f"which view thumbnails {statistics.median(thumbs):.3f} s; size median "
          f"{statistics.median(sizes) / 1024:.0f} KB (max {max(sizes) / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", help="model directory or name [default: the shipped one]")
    parser.add_argument("--database", help="reuse this processed database (no run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mammo-exam-pdf-") as tmp:
        folder = Path(tmp)
        url = args.database or _processed_database(folder, args.exams, args.model)
        out = folder / "pdfs"
        out.mkdir()
        _measure(url, out, args.repeat)


if __name__ == "__main__":
    main()
