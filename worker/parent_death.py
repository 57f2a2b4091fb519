"""Bind a helper process's life to its parent's (Linux ``PR_SET_PDEATHSIG``).

Kept free of heavy imports: the decoders' forkserver imports it first, so the window in
which its parent can die unnoticed is the interpreter's start-up, not the codecs' imports.

The kernel ties the signal to the *thread* that started the process. The forkserver is
started by the first decode of a process (a prefork child's main thread, or an embedded
run's worker thread, which lives as long as the run's decoder pool); when that thread ends
first, the forkserver ends with it and multiprocessing starts a fresh one on next use.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when the process that started it exits; ignore Ctrl-C (the
    parent's to handle). A parent already gone (reparented to init) means exit now: the
    kernel only signals deaths that happen after the request."""
    if sys.platform.startswith("linux"):
        # Elsewhere only an orderly close stops these processes.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
