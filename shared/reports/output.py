"""Where report files go: their folder is made on demand, and a place that cannot be
written is one line naming it and its reason, never a traceback after a night's batch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from shared.errors import ReportWriteError


@contextmanager
def report_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, its folder made; renamed to ``path``
    once the block ends, so a report is whole or absent, never cut short by a full disk
    (a reader, or the worklist's ``report_path``, would take a truncated PDF for a report).
    An ``OSError`` while writing becomes a ``ReportWriteError`` that says what to change.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or exc
        raise ReportWriteError(
            f"Cannot write the report {path}: {reason}. Choose a place this user can "
            f"write to (MAMMO_REPORT_DIR, `mammo report -o FILE`, `mammo run --report-dir "
            f"DIR`); the results stay in the database, and `mammo report` writes them again."
        ) from exc
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


def check_report_folder(folder: Path) -> None:
    """Write and remove a small file in ``folder`` (made if missing), as ``report_file``
    writes a report: a run checks this before its work, so a place it cannot write ends it
    at once (exit 4) instead of after a night's images were classified."""
    probe = folder / f".mammo-write-check.{os.getpid()}"
    with report_file(probe) as temporary:
        temporary.write_bytes(b"")
    with suppress(OSError):
        probe.unlink()
