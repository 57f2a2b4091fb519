"""``mammo worker -Q``: a queue name the app does not configure is a usage error in one line.

Celery itself stops such a worker with a traceback (ImproperlyConfigured, exit 1) after the
model was checked and the broker reached; the command refuses it first, naming the queues it
has, with exit 2, before it needs a broker or a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.queue import QUEUE_NAME
from tests.helpers.cli import invoke_cli

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens: the check must come first


@pytest.mark.parametrize(("given", "named"), [
    ("some_unconfigured_queue", "'some_unconfigured_queue'"),
    (f"{QUEUE_NAME},urgent", "'urgent'"),
    (" , ", "no queue named"),
])
def test_an_unknown_queue_is_refused_in_one_line_naming_the_configured_ones(
    given: str, named: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    code, out = invoke_cli(["worker", "-Q", given], monkeypatch, tmp_path,
                           broker_url=UNREACHABLE,
                           database_url=f"sqlite:///{tmp_path / 'w.db'}")
    assert code == ExitCode.USAGE, out
    [line] = out.strip().splitlines()
    assert line.startswith("error: -Q/--queues: ") and named in line, line
    assert line.endswith(f"the configured queue is: {QUEUE_NAME}"), line
    assert "Traceback" not in out and "KeyError" not in out


def test_a_configured_queue_passes_the_check(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    # --wait-for-servers 0: an unreachable broker ends the start at once instead of being
    # waited for, which is what lets this test see the next check.
    code, out = invoke_cli(["worker", "-Q", f" {QUEUE_NAME} ", "--wait-for-servers", "0"],
                           monkeypatch, tmp_path, broker_url=UNREACHABLE,
                           database_url=f"sqlite:///{tmp_path / 'w.db'}")
    assert code == ExitCode.BROKER_UNAVAILABLE, out  # on to the next check: the broker
    assert "-Q/--queues" not in out
