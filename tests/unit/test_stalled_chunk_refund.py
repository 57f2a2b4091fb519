"""A chunk that met its time limit because its worker was frozen is not charged an attempt.

Celery's soft time limit runs on the worker's monotonic clock, which keeps counting while the
process is stopped: a worker SIGSTOPped (a VM pause, a swap storm) for 105 s with a 27 s
soft limit met it the moment it resumed, and its 64 healthy images were handed back with
the attempt counted (attempts=2); three such stalls quarantined them as `poison`, "the
worker most likely crashed on it". A chunk that computed for its whole limit (an image that
hangs the model) is still charged, so that image still reaches its quarantine.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import worker.tasks
from shared.config import Settings
from shared.db import lifecycle
from shared.db.schema import Image
from shared.queue import TASK_PROCESS_CHUNK, create_celery_app
from tests.helpers.db import queued_batch, schema_sessions
from worker.runtime import WorkerRuntime
from worker.stall import STALL_MIN_GAP_S, STALL_TICK_S, Stall, StallWatch

REPO = Path(__file__).resolve().parents[2]
SOFT_LIMIT_S = 27.0  # MAMMO_TASK_TIME_LIMIT_S=30, as in the probe


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    settings = settings.model_copy(update={"task_time_limit_s": 30})
    app = create_celery_app(settings.embedded())
    assert app.conf.task_soft_time_limit == SOFT_LIMIT_S
    yield app
    app.close()


class FakeClocks:
    """The monotonic clock and the process's CPU time, moved by the test."""

    def __init__(self) -> None:
        self.wall, self.cpu_s = 1000.0, 5.0

    def clock(self) -> float:
        return self.wall

    def cpu(self) -> float:
        return self.cpu_s

    def advance(self, wall_s: float, cpu_s: float) -> None:
        self.wall += wall_s
        self.cpu_s += cpu_s


def _watch(clocks: FakeClocks) -> StallWatch:
    return StallWatch(clock=clocks.clock, cpu=clocks.cpu)


def test_a_long_gap_without_cpu_is_a_stall_a_gap_computing_or_jitter_is_not() -> None:
    clocks = FakeClocks()
    watch = _watch(clocks)
    for _ in range(10):  # computing: the watch wakes on time
        clocks.advance(STALL_TICK_S, 0.9)
        watch.tick()
    clocks.advance(STALL_TICK_S + STALL_MIN_GAP_S - 0.5, 0.0)  # a late wake-up: jitter
    watch.tick()
    clocks.advance(30.0, 29.0)  # a library call holding the GIL, computing on a core
    watch.tick()
    assert watch.stall().frozen_s == 0.0
    clocks.advance(105.0, 0.01)  # SIGSTOP for 105 s: no thread ran, no CPU used
    watch.tick()
    clocks.advance(STALL_TICK_S, 0.9)
    watch.tick()
    stall = watch.stall()
    assert stall.frozen_s == pytest.approx(105.0 - STALL_TICK_S)
    assert stall.ran_s == pytest.approx(10 * STALL_TICK_S + STALL_MIN_GAP_S + 30 + 105 + 1 + 0.5)


def test_the_stall_the_time_limit_struck_in_counts_before_the_watch_wakes_from_it() -> None:
    """On SIGCONT the soft limit may strike before the watch's thread has run again."""
    clocks = FakeClocks()
    watch = _watch(clocks)
    clocks.advance(3.0, 2.5)
    watch.tick()
    clocks.advance(105.0, 0.0)  # resumed: the limit strikes now, no tick since
    stall = watch.stall()
    assert stall.frozen_s == pytest.approx(105.0 - STALL_TICK_S)
    watch.tick()  # the watch wakes afterwards: counted once, not twice
    assert watch.stall().frozen_s == pytest.approx(105.0 - STALL_TICK_S)


def test_a_chunk_is_charged_only_if_it_computed_for_most_of_its_limit() -> None:
    assert not Stall(ran_s=110.0, frozen_s=104.0).spent_the_limit(SOFT_LIMIT_S)  # the probe
    assert not Stall(ran_s=27.0, frozen_s=10.0).spent_the_limit(SOFT_LIMIT_S)
    assert Stall(ran_s=27.0, frozen_s=0.0).spent_the_limit(SOFT_LIMIT_S)  # a hang: computing
    assert Stall(ran_s=27.0, frozen_s=2.0).spent_the_limit(SOFT_LIMIT_S)  # a hiccup in a hang


def _attempts(sessions: sessionmaker[Session], ids: list[int]) -> list[tuple[str, int]]:
    with sessions() as session:
        return list(session.execute(select(Image.state, Image.attempts)
                                    .where(Image.id.in_(ids)).order_by(Image.id)).all())


def _claimed(sessions: sessionmaker[Session], ids: list[int], token: str) -> None:
    with sessions() as session:
        assert len(lifecycle.claim(session, ids, token=token, lease_s=120)) == len(ids)
    assert _attempts(sessions, ids) == [("processing", 1)] * len(ids)


@pytest.mark.parametrize(("stall", "attempts"), [
    (Stall(ran_s=110.0, frozen_s=104.0), 0),  # frozen: the attempt refunded
    (Stall(ran_s=27.2, frozen_s=0.0), 1),  # computed all along: charged
    (None, 1),  # not measured: charged, as before
], ids=["frozen", "computing", "unmeasured"])
def test_a_timed_out_chunk_is_refunded_only_when_its_worker_was_frozen(
        settings: Settings, sessions: sessionmaker[Session], app: Celery,
        stall: Stall | None, attempts: int) -> None:
    _, ids = queued_batch(sessions, "stalled", 3)
    _claimed(sessions, ids, "chunk-1")
    worker.tasks._requeue_one_by_one(app, WorkerRuntime(settings), ids, "chunk-1", stall=stall)
    assert _attempts(sessions, ids) == [("queued", attempts)] * 3


def _watch_reporting(measured: Stall) -> type:
    """A StallWatch that reports the stall the test injects."""

    class Injected:
        def __enter__(self) -> Injected:
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def stall(self) -> Stall:
            return measured

    return Injected


@pytest.mark.parametrize(("injected", "attempts"), [
    (Stall(ran_s=106.0, frozen_s=104.0), 0),
    (Stall(ran_s=27.1, frozen_s=0.0), 1),
], ids=["frozen", "computing"])
def test_the_task_hands_its_watchs_measure_to_the_time_out(
        settings: Settings, sessions: sessionmaker[Session], app: Celery,
        monkeypatch: pytest.MonkeyPatch, injected: Stall, attempts: int) -> None:
    """Through the task itself: the chunk claims its images, then its soft limit strikes."""
    _, ids = queued_batch(sessions, "timed out", 2)

    def times_out(image_ids: list[int], *, token: str, runtime: WorkerRuntime) -> None:
        _claimed(sessions, image_ids, token)
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(worker.tasks, "StallWatch", _watch_reporting(injected))
    monkeypatch.setattr(worker.tasks, "process_chunk", times_out)
    worker.tasks.register_tasks(app, WorkerRuntime(settings))
    outcome = app.tasks[TASK_PROCESS_CHUNK].apply(args=[ids])
    assert outcome.successful() and outcome.result == {"timed_out": 2}
    assert _attempts(sessions, ids) == [("queued", attempts)] * 2


_CHILD = textwrap.dedent("""
    import re, sys, time
    from worker.stall import StallWatch

    class Seen(StallWatch):
        longest = 0.0

        def _frozen_in(self, gap_s, cpu_s):
            Seen.longest = max(Seen.longest, gap_s)
            return super()._frozen_in(gap_s, cpu_s)

    def spin(n):  # a regular expression search holds the GIL all along
        started = time.perf_counter()
        re.match(r"(a+)+$", "a" * n + "b")
        return time.perf_counter() - started

    if sys.argv[1] == "gil":  # one call of about 4 s (each a more doubles it)
        # Calibrated on a call long enough to time, and on its fastest of three: a
        # calibration slowed by a busy machine would otherwise pick too short a call.
        n = 16
        while spin(n) < 0.05:
            n += 1
        n += max(0, math.ceil(math.log2(4.0 / min(spin(n) for _ in range(3)))))
    with Seen(min_gap_s=1.0) as watch:
        print("ready", flush=True)
        if sys.argv[1] == "stopped":
            time.sleep(6)  # the test stops this process for 4 s meanwhile
        else:
            spin(n)
    stall = watch.stall()
    print(f"{stall.ran_s:.3f} {stall.frozen_s:.3f} {Seen.longest:.3f}", flush=True)
""").replace("import re, sys, time", "import math, re, sys, time")


def _child(mode: str, stopped_s: float = 0.0) -> tuple[float, float, float]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, mode], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr
        if stopped_s:
            time.sleep(0.5)
            child.send_signal(signal.SIGSTOP)
            time.sleep(stopped_s)
            child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    ran, frozen, longest = (float(v) for v in out.split())
    return ran, frozen, longest


def test_a_real_sigstop_is_measured_as_frozen() -> None:
    ran, frozen, _ = _child("stopped", stopped_s=4.0)
    assert ran == pytest.approx(6.0, abs=1.5)
    # The 4 s stop, less the tick the watch was due in anyway (and signal latency).
    assert 2.5 <= frozen <= 4.5


def test_a_real_call_holding_the_gil_keeps_the_watch_waiting_but_is_not_frozen() -> None:
    """The watch's thread waits as long as in a stall, but the process computes: an image
    that hangs a library in such a call is still charged."""
    ran, frozen, longest = _child("gil")
    assert longest > 2.0 and ran >= longest  # the watch was held off for the whole call
    assert frozen == 0.0
