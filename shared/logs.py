"""Log lines: one format in every process, their times in UTC and labelled so.

Everything else the product shows is in UTC (messages' "... UTC" times, `mammo status`,
the reports): log times in the host's zone, unlabelled, mixed two clocks in one line (a Los
Angeles worker logged "2026-12-06 02:40:18" for an event `mammo status` showed at 10:40
UTC), and a centre whose hosts sit in several zones could not line their logs up.
``2026-12-06 10:40:18,123Z`` keeps the shape of Python's default time, so what reads it by
a pattern still does, and says which clock it is on.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Celery's task loggers (``get_task_logger``) add the task; its formatter fills these in.
TASK_LOG_FORMAT = ("%(asctime)s %(levelname)s %(name)s: %(task_name)s[%(task_id)s]: "
                   "%(message)s")
_MSEC_FORMAT = "%s,%03dZ"  # after "%Y-%m-%d %H:%M:%S": the milliseconds, and UTC's "Z"


class UtcFormatter(logging.Formatter):
    """``asctime`` in UTC with a ``Z``, whatever the host's zone (TZ)."""

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)
        in_utc(self)


def in_utc(formatter: logging.Formatter) -> None:
    """Make a formatter made elsewhere (Celery's) write its times as ``UtcFormatter``."""
    formatter.converter = time.gmtime
    formatter.default_msec_format = _MSEC_FORMAT


def configure_logging(level: str | int) -> None:
    """The handler on stderr every `mammo` command logs through (the watcher, `mammo run`,
    the worker and its pool processes, forked with it). Like ``logging.basicConfig``, it
    leaves a root logger that already has a handler as it is."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def celery_logs_in_utc(app: Celery) -> None:
    """A worker's handlers of Celery's own making, in line with ``configure_logging``'s.

    ``worker_hijack_root_logger`` is off, so Celery keeps the root handler; but it gives
    billiard's ``multiprocessing`` logger (a pool process killed: "Process
    'ForkPoolWorker-1' ... exited with 'signal 9 (SIGKILL)'") and its task logger handlers
    of their own, which logged "[2026-12-06 02:40:18,123: ERROR/MainProcess] ..." in the
    host's zone. They get this format, and once Celery has made them (its
    ``after_setup_*`` signals; the pool processes fork after that), UTC times. Their
    formatters are kept: they colour a terminal's lines and name a task."""
    # Imported here: every command configures logging, and only the worker needs Celery's.
    from celery import signals

    app.conf.worker_log_format = LOG_FORMAT
    app.conf.worker_task_log_format = TASK_LOG_FORMAT
    signals.after_setup_logger.connect(_every_handler_in_utc, weak=False)
    signals.after_setup_task_logger.connect(_every_handler_in_utc, weak=False)


def _every_handler_in_utc(**_: Any) -> None:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # a PlaceHolder has none
            if handler.formatter is not None:
                in_utc(handler.formatter)
