"""Progress display on stderr, so stdout stays clean for ``--format json|csv``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Soft wrap: rich would otherwise fold every message at 80 columns when stderr is a cron log
# or a journal, splitting file paths mid-name so that they can be neither grepped nor pasted.
STDERR = Console(stderr=True, soft_wrap=True)


def quiet_embedded_logs() -> None:
    """In `mammo run` the worker shares the terminal: only its warnings belong there."""
    for name in ("celery", "kombu"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


@contextmanager
def file_counter(label: str) -> Iterator[Callable[[Path], None]]:
    """A spinner counting files as they are read (the total is unknown up front)."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  TextColumn("{task.completed} files"), TimeElapsedColumn(),
                  console=STDERR, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda _path: bar.advance(task)


@contextmanager
def completion_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=STDERR) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
