"""SIGTERM stops a one-shot command the way Ctrl-C does.

A scheduler (cron's timeout, systemd, ``kill``) stops a job with SIGTERM, whose default
action kills the process where it stands: the chunk in hand stays ``processing`` until its
lease runs out, the decoders' helper processes are left behind, and nothing is said.
Raised as ``KeyboardInterrupt`` instead, it takes Ctrl-C's path: the embedded worker
finishes its chunk and stops, helpers are closed, and ``MammoGroup`` prints what to do and
exits 130. (``mammo watch`` sets a flag instead, checked between its steps: it has a loop
to leave; a one-shot command has not.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (an embedding application's choice)
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
