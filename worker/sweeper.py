"""A bootstep that runs the database sweeper inside every ``mammo worker`` parent process.

Workers sweep on a timer so that a Redis restart or a lost message heals without anyone
running ``mammo recover``. Several workers sweeping at once is harmless (re-sent messages
are no-ops for rows already claimed or done), merely redundant.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import Celery, bootsteps

from shared.config import Settings
from shared.db.engine import create_db_engine, make_session_factory
from shared.recovery import sweep

log = logging.getLogger(__name__)


def install_sweeper(app: Celery, settings: Settings) -> None:
    if settings.sweep_interval_s <= 0:
        return

    class Sweeper(bootsteps.StartStopStep):
        requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._timer_ref: Any = None
            self._sessions: Any = None

        def start(self, parent: Any) -> None:
            self._timer_ref = parent.timer.call_repeatedly(
                settings.sweep_interval_s, self.run_once, priority=10)

        def stop(self, parent: Any) -> None:
            if self._timer_ref is not None:
                self._timer_ref.cancel()

        def run_once(self) -> None:
            try:
                if self._sessions is None:  # created in the parent, after the pool forked
                    self._sessions = make_session_factory(create_db_engine(settings))
                report = sweep(self._sessions, app, settings,
                               queued_older_than_s=settings.requeue_after_s)
            except Exception as exc:  # a sweep must never take the worker down
                log.warning("sweeper: %s: %s", type(exc).__name__, exc)
                return
            if report.requeued or report.note:
                log.warning("sweeper: %s", report.summary())

    app.steps["worker"].add(Sweeper)
