"""Deliveries handed off by the task that claimed them, sent by one thread per channel.

A worker's task used to send in-line: a receiver that hung held the chunk (and so the
process's scoring) for the whole retry policy, about 27 s per notification. The task now
claims the row, which still decides "exactly once", and queues the send here; a daemon
thread per channel delivers in order, so a hanging webhook delays neither scoring nor the
e-mails. The queue is bounded: what does not fit, or waits too long, is recorded failed by
the caller and left to the sweeper's re-send.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    notification_id: int
    run: Callable[[], bool]  # True: delivered; never raises


@dataclass(frozen=True)
class Leftover:
    """What a closed hand-off did not finish: ids of notifications still owed."""

    in_progress: list[int]  # being sent by a thread that may not finish: left pending
    never_started: list[int]  # taken off the queue: nobody sends them now


class _Lane:
    def __init__(self, channel: str, capacity: int) -> None:
        self.queue: queue.Queue[Job | None] = queue.Queue(capacity)
        self.current: int | None = None
        self.delivered_at = time.monotonic()
        self.thread = threading.Thread(target=self._work, name=f"mammo-notify-{channel}",
                                       daemon=True)  # a stuck receiver never blocks exit
        self.thread.start()

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            self.current = job.notification_id
            try:
                if job.run():
                    self.delivered_at = time.monotonic()
            except Exception as exc:  # Job.run should not raise; the lane must outlive it
                log.warning("notification %d not sent: %s", job.notification_id,
                            type(exc).__name__)
            finally:
                self.current = None
                self.queue.task_done()

    def busy(self) -> bool:
        with self.queue.mutex:  # counts the job being run too, unlike qsize()
            return self.queue.unfinished_tasks > 0

    def drain(self) -> list[int]:
        ids: list[int] = []
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return ids
            self.queue.task_done()
            if job is not None:
                ids.append(job.notification_id)

    def stop(self) -> None:
        # Refilled since the drain (Full): the daemon thread then dies with the process.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)


class HandOff:
    def __init__(self, *, capacity: int) -> None:
        self.capacity = capacity
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    def submit(self, channel: str, job: Job) -> bool:
        """Queue ``job`` on ``channel``'s thread; False when its queue is full."""
        with self._lock:
            lane = self._lanes.get(channel)
            if lane is None:
                lane = self._lanes[channel] = _Lane(channel, self.capacity)
        try:
            lane.queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def close(self, patience_s: float) -> Leftover:
        """Let queued deliveries go out while they succeed; stop waiting once none has
        succeeded for ``patience_s`` (a healthy channel drains, a dead one is not waited for).
        A later ``submit`` starts new threads."""
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        since = time.monotonic()
        while any(lane.busy() for lane in lanes):
            last = max([since, *(lane.delivered_at for lane in lanes)])
            if time.monotonic() - last > patience_s:
                break
            time.sleep(0.05)
        never_started = [i for lane in lanes for i in lane.drain()]
        in_progress = [i for lane in lanes if (i := lane.current) is not None]
        for lane in lanes:
            lane.stop()
        return Leftover(in_progress, never_started)
