"""A private temporary directory per `mammo worker` pool process, removed with it.

A Celery pool process ends with ``os._exit``: no atexit handler and no multiprocessing
finalizer runs. What a process left in TMPDIR stayed there for ever: two TensorFlow
``__autograph_generated_file*.py`` per model load (removed only at exit) and the decoders'
forkserver socket in a ``pymp-*`` directory, about 5 KB and three entries per process
start; with ``--max-tasks-per-child`` a worker restarts its processes every few hundred
chunks, and TMPDIR filled with them (1,800 entries a month on a drop folder).

Each pool process therefore gets ``mammo-worker-<pid>-<random>`` in TMPDIR at its start
(``enter``, before TensorFlow or the forkserver make anything), made the process's
``tempfile`` directory, TMPDIR (for the forkserver and the decoders it forks) and
multiprocessing's own (the forkserver socket directly in it). ``leave`` removes it when
the process exits (``worker_process_shutdown``), after its decoder pool is closed.

A process killed outright (SIGKILL, the OOM killer) runs no handler: ``sweep`` removes
the directories of processes that are gone, at each pool process start (a killed one is
replaced at once) and in the worker's parent when it stops. A process holds an exclusive
``flock`` on its directory for its whole life, and the kernel drops it when the process
dies however it dies: a directory is removed only when its lock can be taken and no
process of its PID runs, so a live process's directory (another worker's, another PID
namespace's sharing this TMPDIR) is never touched, and nothing but these directories is.

A TMPDIR longer than ``TMPDIR_MAX`` (59 bytes) gets no private directory (a warning says
so): the forkserver's socket in it would pass a Unix socket's 107-byte path limit.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "mammo-worker-"
# A Unix socket's path holds at most 107 bytes: the forkserver's is
# "<TMPDIR>/mammo-worker-<pid, up to 7 digits>-<8 random>/listener-<8 random>".
_SUN_PATH_MAX = 107
TMPDIR_MAX = _SUN_PATH_MAX - len(f"/{PREFIX}4194304-12345678/listener-12345678")  # 59


@dataclass
class _Own:
    """This process's directory, the descriptor holding its lock, and the process."""

    path: Path | None = None
    lock: int | None = None
    pid: int | None = None


_own = _Own()


def enter(**_signal: Any) -> None:
    """``worker_process_init``: make this pool process's private temporary directory and
    point every temporary file of this process and its children into it. Never fatal: a
    TMPDIR that cannot take it leaves the process on TMPDIR itself, as before."""
    base = tempfile.gettempdir()  # the worker's TMPDIR (inherited from the parent)
    sweep(base)
    if len(os.fsencode(base)) > TMPDIR_MAX:
        # The forkserver could not bind its socket in there, and decoding would stop.
        log.warning("worker process %d: TMPDIR %s is too long for a private temporary "
                    "directory (the decoders' socket path would pass the %d-byte limit of "
                    "a Unix socket): this process's temporary files stay in TMPDIR after it "
                    "exits; set TMPDIR to a path of at most %d bytes", os.getpid(), base,
                    _SUN_PATH_MAX, TMPDIR_MAX)
        return
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        lock = _locked(path)
    except OSError as exc:
        log.warning("worker process %d: no private temporary directory in %s (%s): its "
                    "temporary files stay there after it exits", os.getpid(), base,
                    exc.strerror or exc)
        return
    _own.path, _own.lock, _own.pid = path, lock, os.getpid()
    tempfile.tempdir = str(path)
    os.environ["TMPDIR"] = str(path)
    # multiprocessing makes its own pymp-* directory otherwise: its socket then sits one
    # level deeper, nearer the 107-byte limit of a Unix socket's path.
    multiprocessing.current_process()._config["tempdir"] = str(path)  # type: ignore[attr-defined]


def leave(**_signal: Any) -> None:
    """``worker_process_shutdown``: remove this process's directory (connected after the
    runtime's ``close``, which stops the decoders using it)."""
    path, lock = _own.path, _own.lock
    if path is None or _own.pid != os.getpid():
        return  # none made, or the parent's (a fork of a process that had one)
    _own.path = _own.lock = _own.pid = None
    shutil.rmtree(path, ignore_errors=True)
    if lock is not None:
        os.close(lock)


def sweep(base: str | Path | None = None, **_signal: Any) -> None:
    """Remove the directories that pool processes now gone left in ``base`` (TMPDIR).
    Also a ``worker_shutdown`` receiver: the parent, its pool stopped, removes those of
    processes killed since the last start."""
    folder = Path(base) if isinstance(base, str | Path) else Path(tempfile.gettempdir())
    for path in folder.glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            _remove_if_unlocked(path)


def _locked(path: Path) -> int:
    """A descriptor of ``path`` holding an exclusive lock on it (not inherited by exec)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = _locked(path)
    except OSError:
        return  # held: its process lives (in another PID namespace?), or not ours to read
    try:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by a worker process that was killed", path)
    finally:
        os.close(fd)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's: alive
    return True


__all__ = ["PREFIX", "TMPDIR_MAX", "enter", "leave", "sweep"]
