"""A bootstep that runs the database sweeper inside every ``mammo worker`` parent process.

Workers sweep on a timer so that a Redis restart or a lost message heals without anyone
running ``mammo recover``, and follow up (timed-out exams, owed or failed notifications).
Several workers sweeping at once is harmless (re-sent messages are no-ops for rows already
claimed or done, notifications are claimed once), merely redundant.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from celery import Celery, bootsteps

from shared.config import Settings
from shared.db.engine import create_db_engine, make_session_factory
from shared.notify import Notifier
from shared.recovery import follow_up, sweep

log = logging.getLogger(__name__)


class SweepLoop:
    """One worker's sweeps: re-queue lost work at once, follow up in a thread.

    A hanging mail server can hold a delivery for half a minute per retry, and the timer
    runs in the process that feeds the pool, so the follow-up gets a thread (one at a time:
    a slow one is not stacked on).
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._notifier: Notifier | None = None
        self._following: threading.Thread | None = None

    def run_once(self) -> None:
        try:
            if self._notifier is None:  # created in the parent, after the pool forked
                sessions = make_session_factory(create_db_engine(self.settings))
                self._notifier = Notifier(self.settings, sessions)
            report = sweep(self._notifier.sessions, self.app, self.settings,
                           queued_older_than_s=self.settings.requeue_after_s)
            if report.requeued or report.note:
                log.warning("sweeper: %s", report.summary())
        except Exception as exc:  # a sweep must never take the worker down
            log.warning("sweeper: %s: %s", type(exc).__name__, exc)
            return
        if self._following is None or not self._following.is_alive():
            self._following = threading.Thread(target=self.follow_up, args=(self._notifier,),
                                               name="mammo-follow-up", daemon=True)
            self._following.start()

    def follow_up(self, notifier: Notifier) -> None:
        try:
            followed = follow_up(notifier.sessions, self.settings, notifier)
        except Exception as exc:
            log.warning("sweeper follow-up: %s: %s", type(exc).__name__, exc)
            return
        if followed:
            log.warning("sweeper: %s", followed.summary())


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

    app.steps["worker"].add(Sweeper)
