"""Decode and preprocess a chunk's images in a small pool of processes.

Why processes: decoding holds the GIL (JPEG 2000 costs ~1 s of CPU per full-field image) and
one image at a time leaves the second core idle while TensorFlow waits for the batch. A pool
of ``decode_processes`` decodes the chunk's images side by side; only the small preprocessed
tensor (the model's input size, float32) comes back.

Safety:
- The pool is started from a *forkserver*, a fresh interpreter that never imported
  TensorFlow, so no decoder process is ever forked from a process that holds TF threads.
- Memory stays bounded: the pool holds at most one image per process in flight.
- A decoder process that dies (a codec segfault, the OOM killer) breaks the pool: the
  caller gets ``DecoderCrashed`` and retries image by image, so only the image that kills
  a decoder is charged an attempt (see ``worker.pipeline``). A fresh pool is started.
- Each decoder process dies with its parent, the forkserver, and the forkserver with the
  process that started it (Linux ``PR_SET_PDEATHSIG``), so a SIGKILLed worker leaves no
  orphan decoders.
- The forkserver imports exactly this process's code: multiprocessing starts it as
  ``python -c ...``, which puts the working directory first on its path, so an old checkout
  of this repository or a folder named ``worker/`` there was imported (and run) in place
  of the installed code. It is started with ``PYTHONSAFEPATH`` (no working directory) and
  this process's ``sys.path`` (see ``_code_of_this_process``).
- Each decoder runs one BLAS/OpenMP thread (the pool is the parallelism): where the host
  limits threads (``ulimit -u``, a container's pids limit, systemd TasksMax) OpenBLAS could
  not start its second thread and spun for ever at 100 % CPU in a matrix product.
- The OOM killer takes a decoder before the worker or ``mammo run`` that holds the model
  (``oom_score_adj`` 1000): a decoder's death is the crash the pool is built to survive.

``decode_processes = 0`` decodes in the calling thread (the plain serial loop).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from shared.enums import ErrorCode
from shared.errors import InputError, TransientError
from shared.formatting import without_control
from shared.imaging.model_input import ModelInputSource, load_model_input
from shared.imaging.readers.base import host_fault, host_fault_reason
from shared.imaging.readers.messages import described
from worker.parent_death import die_with_parent

log = logging.getLogger(__name__)

# Reader notes that say nothing about how this image differs from a plain reading: the
# DICOM transfer syntax and decoder plugin are the same for every file of a kind, and the
# VOI transform is stored at intake (images.voi). What stays is what a reader should
# know: an inversion, an EXIF rotation, a range taken from the pixels, NaN pixels, pages,
# merged channels, a modality taken on trust, lenient header readings.
ROUTINE_NOTES = frozenset({"transfer_syntax", "decoder", "voi"})
# Notes that question the score itself (a breast lying against its stated laterality, two
# lateralities in one header, an implant): kept first, so the per-image bound never drops them.
# A view read wrongly pairs a breast with the other breast's wrong view (bilateral head).
# A patient ID or accession number that was not valid text puts the exam's grouping itself
# in doubt (dicom_text.identity_notes).
SCORE_NOTES = ("laterality", "laterality_conflict", "view_conflict", "implant",
               "low_resolution", "identity_charset")
# Bounds on what a prediction row stores (the notes quote header values, cut short).
NOTE_LIMIT = 200
KEY_LIMIT = 32
NOTES_PER_IMAGE = 12


def input_notes(notes: Mapping[str, str]) -> dict[str, str]:
    """The reader's notes worth a reader's eye, each on one line and bounded in length."""
    kept = sorted(((key, text) for key, text in notes.items() if key not in ROUTINE_NOTES),
                  key=lambda note: note[0] not in SCORE_NOTES)  # stable: else as read
    return {without_control(key, one_line=True)[:KEY_LIMIT]: _bounded(text)
            for key, text in kept[:NOTES_PER_IMAGE]}


def _bounded(text: str) -> str:
    # A header value quoted raw may hold a line break or a terminal control character.
    line = without_control(str(text), one_line=True)
    return line if len(line) <= NOTE_LIMIT else line[:NOTE_LIMIT - 3] + "..."


@dataclass(frozen=True)
class DecodeJob:
    """Everything a decoder process needs: plain, picklable values, no database rows."""

    image_id: int
    source: ModelInputSource


@dataclass(frozen=True)
class Decoded:
    image_id: int
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float
    # input_notes of the reader's notes: a few short sentences, cheap to send back.
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DecodeFailure:
    image_id: int
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class HostShort:
    """Decoding this image met the host running short (``readers.base.host_fault``: no
    memory, too many open files): no fault of the file. ``decode_all`` raises it as
    ``DecoderCrashed``, so the image is retried (and charged) like one that killed its
    decoder, ``poison`` only after MAMMO_MAX_ATTEMPTS, and never failed ``unreadable``."""

    image_id: int
    reason: str


DecodeResult = Decoded | DecodeFailure


class DecoderCrashed(RuntimeError):
    """A decoder process died, or the host ran short (``host_reason``), while this group's
    images were being decoded."""

    def __init__(self, message: str, *, host_reason: str | None = None) -> None:
        super().__init__(message)
        self.host_reason = host_reason


class DecodersUnavailable(TransientError):
    """Decoder processes could not be started (an OSError: too many open files, no more
    processes): no image's fault. The chunk hands its claims back with their attempts
    refunded and retries (``worker.pipeline``); an OSError left to escape charged every
    image of the chunk an attempt per run, until healthy images ended ``poison``."""


def run_job(job: DecodeJob) -> DecodeResult | HostShort:
    """Decode + preprocess one image; an unusable input becomes a failure with its reason,
    the host running short a ``HostShort``."""
    try:
        return _prepare(job)
    except SoftTimeLimitExceeded:
        raise
    except InputError as exc:
        return DecodeFailure(job.image_id, exc.code, exc.message)
    except Exception as exc:  # a worker never dies of an input
        if host_fault(exc):
            log.warning("image %s: %s", job.image_id, host_fault_reason(exc))
            return HostShort(job.image_id, host_fault_reason(exc))
        log.exception("unexpected error preparing image %s", job.image_id)
        # The library's text on one short printable line (it may quote the file's bytes);
        # in full, with the stack, in the log above.
        return DecodeFailure(job.image_id, ErrorCode.INTERNAL,
                             f"Unexpected error while reading the image: {described(exc)}")


def _prepare(job: DecodeJob) -> Decoded:
    ready = load_model_input(job.source)
    return Decoded(job.image_id, ready.tensor, ready.decode_ms, ready.preprocess_ms,
                   input_notes(ready.notes))


def _noop() -> None:
    return None


class ChunkDecoder:
    """Decodes the images of a group, in order; in-process or through the pool."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the decoder processes now (e.g. while the model loads), not on first use.
        One that cannot start is logged with the limit to raise; the first chunk tries again
        (and hands its images back if it cannot either)."""
        if self.processes:
            try:
                pool = self._ensure_pool()
                with _may_have_children(), _code_of_this_process():
                    for _ in range(self.processes):
                        pool.submit(_noop)  # each submit starts one more process, up to the limit
            except OSError as exc:
                self.close()
                log.error("%s", _not_started(exc))

    def decode_all(self, jobs: Sequence[DecodeJob]) -> list[DecodeResult]:
        if not self.processes:
            return _checked([run_job(job) for job in jobs])
        futures: list[Future[DecodeResult | HostShort]] = []
        try:
            pool = self._ensure_pool()
            with _may_have_children(), _code_of_this_process():
                futures.extend(pool.submit(run_job, job) for job in jobs)
        except OSError as exc:  # EMFILE, EAGAIN... starting a decoder (or its forkserver)
            _cancel(futures)
            self.close()
            raise DecodersUnavailable(_not_started(exc)) from exc
        except BrokenProcessPool as exc:  # a decoder died while the jobs were handed over
            _cancel(futures)
            self.close()
            raise DecoderCrashed(f"a decoder process died: {exc}") from exc
        try:
            return _checked([future.result() for future in futures])
        except BrokenProcessPool as exc:
            self.close()
            raise DecoderCrashed(f"a decoder process died: {exc}") from exc
        finally:
            _cancel(futures)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            # The forkserver imports the codecs once; each decoder is then a cheap fork.
            # It dies with this process too (decoder_guard): otherwise a SIGKILLed pool
            # child would leave it, and the decoders it forked, running for ever.
            context.set_forkserver_preload(["worker.decoder_guard", __name__])
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context,
                                             initializer=_decoder_started)
        return self._pool


@contextlib.contextmanager
def _may_have_children() -> Iterator[None]:
    """Let a Celery prefork child start decoder processes through stdlib multiprocessing.

    A billiard child is *daemonic*, which multiprocessing refuses children to so that none
    outlive it (ours cannot: ``die_with_parent``, and ``close`` on shutdown), and carries
    billiard's authkey type, which stdlib pickling refuses to send to a new process.
    """
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    saved = {key: config[key] for key in ("daemon", "authkey") if key in config}
    config.pop("daemon", None)
    if "authkey" in saved:
        config["authkey"] = AuthenticationString(bytes(saved["authkey"]))
    try:
        yield
    finally:
        config.pop("daemon", None)
        config.update(saved)


def _decoder_started() -> None:
    """Each decoder process, at its start: dies with its parent, and is the first the OOM
    killer takes (raising one's own score needs no privilege)."""
    die_with_parent()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w",
                                            encoding="ascii") as adj:
        adj.write("1000")


_ENVIRON_LOCK = threading.Lock()
# Read by OpenBLAS/OpenMP/MKL when numpy loads, in the forkserver: one thread per decoder.
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS")}


@contextlib.contextmanager
def _code_of_this_process() -> Iterator[None]:
    """Make a forkserver started meanwhile import the code this process runs, never the
    working directory's.

    multiprocessing starts the forkserver (on the first decoder process, and again after it
    died) as ``python -c ...``: the working directory comes first on its path, and Python
    3.11 ignores the ``sys_path`` it is handed, so a ``worker/`` package there was imported
    for the preloaded modules. ``PYTHONSAFEPATH`` (Python >= 3.11) leaves the working
    directory out; ``PYTHONPATH`` puts this process's path first (a checkout on
    ``PYTHONPATH`` or the test run's directory, not only installed packages): the
    forkserver finds each module where this process found it. Each decoder
    then takes this process's ``sys.path`` too (multiprocessing's start-up). The environment
    is changed only while decoder processes start, as the forkserver is started in there;
    it also gets ``_ONE_THREAD``.
    (An interpreter run with ``-E`` hands that flag on, and the forkserver then reads
    neither variable: ``-I`` or ``-P`` keeps the working directory out without them.)
    """
    wanted = {"PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(_import_path()),
              **_ONE_THREAD}
    with _ENVIRON_LOCK:
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _import_path() -> list[str]:
    """This process's ``sys.path``, absolute, less the working directory (``''``, or
    ``python -m`` run there) unless this very code was imported from it."""
    try:
        here = os.getcwd()
    except OSError:  # removed since: its relative entries name nothing
        here = ""
    ours = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # holds worker/
    entries: dict[str, None] = {}
    for entry in sys.path:
        if not isinstance(entry, str) or os.pathsep in entry:
            continue  # a PYTHONPATH cannot say it
        if not os.path.isabs(entry) and not here:
            continue
        path = os.path.normpath(os.path.join(here, entry))
        if not os.path.exists(path):
            continue  # e.g. an editable install's finder mark: the forkserver adds its own
        if here and os.path.realpath(path) == os.path.realpath(here) != ours:
            continue
        entries[path] = None
    return list(entries)


def _not_started(exc: OSError) -> str:
    return f"decoder processes could not be started: {host_fault_reason(exc)}"


def _checked(results: list[DecodeResult | HostShort]) -> list[DecodeResult]:
    """The group's results; ``DecoderCrashed`` if one image met the host running short."""
    short = next((r for r in results if isinstance(r, HostShort)), None)
    if short is not None:
        raise DecoderCrashed(f"image {short.image_id}: {short.reason}",
                             host_reason=short.reason)
    return [r for r in results if not isinstance(r, HostShort)]


def _cancel(futures: list[Future[DecodeResult | HostShort]]) -> None:
    """Drop what has not started (a soft time limit, a crash): nothing waits on it now."""
    for future in futures:
        future.cancel()
