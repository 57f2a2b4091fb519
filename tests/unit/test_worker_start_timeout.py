"""A pool child slow to load its model (a loaded host, a slow GPU start) is not killed as
hung: Celery's limit for a child to report up is a setting, and each child logs its start
time against it."""

from __future__ import annotations

import logging

import pytest

from shared.config import Settings
from shared.queue import create_celery_app
from worker.runtime import log_start_time


def test_the_pool_child_start_limit_is_the_setting(settings: Settings) -> None:
    assert settings.worker_start_timeout_s == 600  # default: room for a loaded host's load
    slow = settings.model_copy(update={"worker_start_timeout_s": 900})
    assert create_celery_app(settings).conf.worker_proc_alive_timeout == 600
    assert create_celery_app(slow).conf.worker_proc_alive_timeout == 900


def test_a_child_start_near_the_limit_is_a_warning_naming_the_setting(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="worker.runtime"):
        log_start_time(12.0, 600)
        log_start_time(400.0, 600)
    quick, slow = caplog.records
    assert quick.levelno == logging.INFO and "in 12 s" in quick.getMessage()
    assert slow.levelno == logging.WARNING
    assert "in 400 s; MAMMO_WORKER_START_TIMEOUT_S is 600 s: raise it" in slow.getMessage()
