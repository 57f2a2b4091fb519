"""``mammo report``: one dispatch from (what, format) to the writer, and default file names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.errors import ReportTargetNotFoundError
from shared.exams import refresh_due_exams
from shared.queries import require_batch
from shared.reports.batch_summary import BATCH_FORMATS, batch_report_path, write_batch_report
from shared.reports.exam_reports import (
    EXAM_FORMATS,
    IMAGE_FORMATS,
    write_exam_report,
    write_image_report,
)
from shared.reports.exports import DISCLAIMER, write_csv, write_json, write_json_listing
from shared.reports.stats import StatsFilter, collect_stats, stats_rows
from shared.reports.worklist import (
    FLAT_WORKLIST_KEYS,
    WorklistFilter,
    exam_pdf_path,
    flat_worklist_row,
    image_pdf_path,
    iter_worklist,
)

FORMATS_BY_KIND: dict[str, tuple[str, ...]] = {
    "exam": EXAM_FORMATS, "image": IMAGE_FORMATS, "batch": BATCH_FORMATS,
    "worklist": ("csv", "json"), "stats": ("csv", "json"),
}
# What --since/--until narrow; an exam, image or batch is whole.
RANGED_KINDS = ("worklist", "stats")


def report_name(kind: str) -> str:
    """"an exam report", "a batch report": the kind as messages name it."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} report"


def formats_of(kind: str) -> str:
    return f"{report_name(kind)} is written as {'|'.join(FORMATS_BY_KIND[kind])}"


@dataclass(frozen=True)
class ReportRequest:
    kind: str  # a key of FORMATS_BY_KIND
    fmt: str
    target: str | None = None  # exam: StudyInstanceUID; image, batch: id; worklist/stats: batch id
    since: datetime | None = None  # RANGED_KINDS only
    until: datetime | None = None

    def existing_batch_id(self, session: Session) -> int | None:
        """The batch number that narrows a worklist or statistics, after checking it exists
        (an empty report would read as "nothing there yet")."""
        batch_id = self.batch_id()
        if batch_id is not None:
            require_batch(session, batch_id)
        return batch_id

    def batch_id(self) -> int | None:
        if self.target is None:
            return None
        try:
            return int(self.target)
        except ValueError:
            raise ReportTargetNotFoundError(
                f"a batch is named by its number, not {self.target!r}") from None

    def image_id(self) -> int:
        """The image named by its number (``image_id``, as results and the worklist give it)."""
        if self.target is None:
            raise ReportTargetNotFoundError(
                "`mammo report image` needs the image's id (image_id in `mammo results` and "
                "`mammo worklist`)")
        try:
            return int(self.target)
        except ValueError:
            raise ReportTargetNotFoundError(
                f"an image is named by its number (image_id), not {self.target!r}") from None

    def default_path(self, settings: Settings) -> Path:
        if self.kind == "exam" and self.target:
            pdf = exam_pdf_path(settings.report_dir, self.target)
            return pdf.with_suffix(f".{self.fmt}")
        if self.kind == "image" and self.target:
            return image_pdf_path(settings.report_dir, self.image_id()).with_suffix(
                f".{self.fmt}")
        if self.kind == "batch" and self.target:
            return batch_report_path(settings, self.batch_id() or 0, self.fmt)
        scope = f"-batch-{self.target}" if self.target else ""
        return settings.report_dir / f"{self.kind}{scope}.{self.fmt}"


def _exam(session: Session, req: ReportRequest, path: Path, settings: Settings) -> Path:
    if not req.target:
        raise ReportTargetNotFoundError("`mammo report exam` needs the exam's StudyInstanceUID")
    return write_exam_report(session, req.target, path, req.fmt, settings)


def _image(session: Session, req: ReportRequest, path: Path, settings: Settings) -> Path:
    return write_image_report(session, req.image_id(), path, req.fmt, settings)


def _batch(session: Session, req: ReportRequest, path: Path, settings: Settings) -> Path:
    batch_id = req.batch_id()
    if batch_id is None:
        raise ReportTargetNotFoundError("`mammo report batch` needs the batch number")
    return write_batch_report(session, batch_id, path, req.fmt, settings)


def _worklist(session: Session, req: ReportRequest, path: Path, settings: Settings) -> Path:
    batch_id = req.existing_batch_id(session)
    refresh_due_exams(session, timeout_s=settings.exam_timeout_s)
    rows = iter_worklist(session, WorklistFilter(batch_id, req.since, req.until),
                         report_dir=settings.report_dir)
    if req.fmt == "json":
        # A file, not the array `mammo worklist --format json` prints: an object, like the
        # exam and batch JSON reports, so it carries the statement and its models. Written
        # as the rows come; the models they name are known once they are all written.
        models: set[str] = set()

        def noted(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for row in rows:
                models.update(row["models"])
                yield row

        return write_json_listing(
            path, lambda: {"disclaimer": DISCLAIMER, "models": sorted(models)}, "worklist",
            noted(rows))
    # CSV files carry data rows only (as the batch CSV export); `mammo report` prints the
    # statement when it writes them.
    return write_csv(map(flat_worklist_row, rows), path, columns=FLAT_WORKLIST_KEYS)


def stats_json(stats: dict[str, Any]) -> dict[str, Any]:
    """The statistics as `mammo stats --format json` prints and `mammo report stats` writes
    them: the decision-support statement first."""
    return {"disclaimer": DISCLAIMER, **stats}


def _stats(session: Session, req: ReportRequest, path: Path, settings: Settings) -> Path:
    stats = collect_stats(session, settings,
                          StatsFilter(req.existing_batch_id(session), req.since, req.until))
    if req.fmt == "json":
        return write_json(stats_json(stats), path)
    return write_csv(stats_rows(stats), path, columns=("section", "key", "value"))


_WRITERS: dict[str, Callable[[Session, ReportRequest, Path, Settings], Path]] = {
    "exam": _exam, "image": _image, "batch": _batch, "worklist": _worklist, "stats": _stats,
}


def write_report(session: Session, req: ReportRequest, path: Path | None,
                 settings: Settings) -> Path:
    if req.fmt not in FORMATS_BY_KIND[req.kind]:
        raise ValueError(f"{formats_of(req.kind)}, not {req.fmt}")
    return _WRITERS[req.kind](session, req, path or req.default_path(settings), settings)
