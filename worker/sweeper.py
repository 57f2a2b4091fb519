"""A bootstep that runs the database sweeper inside every ``mammo worker`` parent process.

Workers sweep on a timer so that a Redis restart or a lost message heals without anyone
running ``mammo recover``, and follow up (timed-out exams, owed or failed notifications).
Several workers sweeping at once is harmless (re-sent messages are no-ops for rows already
claimed or done, notifications are claimed once), merely redundant.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import Celery, bootsteps

from shared.config import Settings
from shared.db.engine import create_db_engine, make_session_factory
from shared.notify import Notifier
from shared.queue import broker_uptime_s
from shared.recovery import BackgroundFollowUp, lost_after, sweep

log = logging.getLogger(__name__)


class SweepLoop:
    """One worker's sweeps: re-queue lost work at once, follow up in a thread."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.follow_up: BackgroundFollowUp | None = None

    def run_once(self) -> None:
        try:
            if self.follow_up is None:  # created in the parent, after the pool forked
                sessions = make_session_factory(create_db_engine(self.settings))
                self.follow_up = BackgroundFollowUp(
                    self.settings, Notifier(self.settings, sessions), log)
            waits = lost_after(self.settings, broker_uptime_s(self.app))
            after = waits.routine_s
            report = sweep(self.follow_up.notifier.sessions, self.app, self.settings,
                           queued_older_than_s=after, urgent_older_than_s=waits.urgent_s,
                           owed_older_than_s=self.settings.requeue_after_s)
            if report.requeued or report.note:
                restarted = (f" (the broker started {after} s ago: images "
                             "queued before that lost their message)"
                             if after < self.settings.requeue_after_s and report.sent_before
                             else "")
                # Re-sent work is worth an operator's eye; a sweep that found long-queued
                # images but left them to a broker still holding messages changed nothing.
                log.log(logging.WARNING if report.requeued else logging.INFO,
                        "sweeper: %s%s", report.summary(), restarted)
        except Exception as exc:  # a sweep must never take the worker down
            log.warning("sweeper: %s: %s", type(exc).__name__, exc)
            return
        self.follow_up.kick()


def install_sweeper(app: Celery, settings: Settings) -> None:
    if settings.sweep_interval_s <= 0:
        return
    loop = SweepLoop(app, settings)

    class Sweeper(bootsteps.StartStopStep):
        requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._timer_ref: Any = None

        def start(self, parent: Any) -> None:
            self._timer_ref = parent.timer.call_repeatedly(
                settings.sweep_interval_s, loop.run_once, priority=10)

        def stop(self, parent: Any) -> None:
            if self._timer_ref is not None:
                self._timer_ref.cancel()
            if loop.follow_up is not None:  # a re-send in progress: wait or say so
                loop.follow_up.notifier.close()

    app.steps["worker"].add(Sweeper)
