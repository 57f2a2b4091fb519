"""Which signals stop `mammo watch` after its current step: SIGHUP (its terminal closed)
killed it at once with no line in its log; under nohup it is ignored, and stays so."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from producer.watch.service import stop_on_signals


def test_sighup_stops_the_watch_after_its_step_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    # A terminal's own disposition would end this test run: a stand-in records instead.
    missed: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, _frame: missed.append(signum))
    try:
        with caplog.at_level(logging.INFO), stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.wait(5) and not missed
        assert "received SIGHUP; finishing the current step, then stopping" in caplog.text
        os.kill(os.getpid(), signal.SIGHUP)  # handed back when the watch ends
        assert missed == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_watch_started_under_nohup_keeps_ignoring_sighup() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert not stop.wait(0.5)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
