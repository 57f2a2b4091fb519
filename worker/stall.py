"""How long a worker process was frozen (not run at all) while a chunk ran, so that a chunk
whose time limit struck because its VM was paused is not charged to its images."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# A chunk's time limit is the image's fault only if the chunk computed for most of it.
STALL_TICK_S = 1.0  # how often a chunk's StallWatch looks at the clock
STALL_MIN_GAP_S = 5.0  # a look this late past its due time is a stall, not scheduling jitter
FROZEN_CPU_SHARE = 0.2  # ... if the process used under this share of the gap in CPU time
CHARGED_SHARE = 0.9  # a timed-out chunk that computed for this share of its limit is charged


@dataclass(frozen=True)
class Stall:
    """What a chunk's ``StallWatch`` measured: seconds it ran, and of those, seconds this
    process was frozen (not run at all)."""

    ran_s: float
    frozen_s: float

    @property
    def computed_s(self) -> float:
        return max(0.0, self.ran_s - self.frozen_s)

    def spent_the_limit(self, soft_limit_s: float) -> bool:
        """Whether the chunk itself used up its soft time limit: it computed (was not frozen)
        for at least ``CHARGED_SHARE`` of it. An image that hangs the model or a decoder
        does; a chunk that met its limit because the process was stopped for a good part
        of it (a VM paused, a swap storm, SIGSTOP) did not, and might well have finished."""
        return self.computed_s >= CHARGED_SHARE * soft_limit_s


class StallWatch:
    """Measure how long this process was frozen while a chunk ran (``with`` it; ``stall()``).

    Celery's time limits run on the worker's monotonic clock (its pool's timers), which
    keeps counting while the process is stopped (SIGSTOP, a swap storm) and, on most
    hypervisors, while its VM is paused: on resumption the soft limit fires at once, and
    the chunk's healthy images were charged an attempt, quarantined as ``poison`` after
    ``MAMMO_MAX_ATTEMPTS`` such stalls. (A suspended host's monotonic clock stops: no limit
    fires, and nothing needs telling apart.)

    The detector: a thread wakes every ``STALL_TICK_S`` on that same clock. A wake-up over
    ``STALL_MIN_GAP_S`` late means no thread of this process ran for that long; it counts as
    frozen only if the process (all its threads: ``time.process_time``) used under
    ``FROZEN_CPU_SHARE`` of the gap in CPU time. A stopped or paused process uses none, one
    waiting for its pages to be swapped back in little. A library call that holds the GIL
    also keeps this thread from waking, but computes on a core meanwhile: a hang there stays
    the image's. Work outside the process (decoder processes, the GPU, the database) leaves
    this thread free to wake: a chunk waiting on them is computing, as far as this goes.
    The interval still open when the measure is read counts as well: the limit strikes as
    the process resumes, possibly before this thread has run. The clocks are parameters,
    for tests.
    """

    def __init__(self, *, tick_s: float = STALL_TICK_S, min_gap_s: float = STALL_MIN_GAP_S,
                 clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self._tick_s, self._min_gap_s = tick_s, min_gap_s
        self._clock, self._cpu = clock, cpu
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self._last = clock()
        self._last_cpu = cpu()
        self._frozen = 0.0

    def __enter__(self) -> StallWatch:
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.tick()  # the interval still open: a stall the thread never woke up from

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.tick()

    def tick(self) -> None:
        """Close the interval since the last look: count it if it was a stall."""
        with self._lock:
            now, cpu = self._clock(), self._cpu()
            self._frozen += self._frozen_in(now - self._last, cpu - self._last_cpu)
            self._last, self._last_cpu = now, cpu

    def stall(self) -> Stall:
        """The measure so far, the interval still open included."""
        with self._lock:
            now, cpu = self._clock(), self._cpu()
            frozen = self._frozen + self._frozen_in(now - self._last, cpu - self._last_cpu)
            return Stall(ran_s=now - self._started, frozen_s=frozen)

    def _frozen_in(self, gap_s: float, cpu_s: float) -> float:
        late = gap_s - self._tick_s
        if late > self._min_gap_s and cpu_s < FROZEN_CPU_SHARE * gap_s:
            return late
        return 0.0
