"""`mammo status` says when the workers' saves fail, though the database answers its reads.

Probe: the predictions table on a full disk. The workers looped "saving failed; 16 image(s)
handed back, attempts refunded" (nothing lost), while `mammo status --health` said the
database was reachable, nothing owed, no warning, and exited 0: the reason ("could not
extend file ...: No space left on device") was only in the workers' logs. Each worker now
records its failure in the broker; status reads it there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.cli import commands_query
from producer.cli.exit_codes import ExitCode
from shared.save_failures import (
    REASON_LIMIT,
    SaveFailure,
    database_reason,
    failing_summary,
)
from tests.helpers.cli import run_cli

PG_DISK_FULL = ('could not extend file "base/16384/16417": No space left on device\n'
                "HINT:  Check free disk space.")
NOW = 1_800_000_000.0


def test_the_reason_is_the_databases_first_line_and_hint_printable_and_bounded() -> None:
    assert database_reason(Exception(PG_DISK_FULL)) == (
        'could not extend file "base/16384/16417": No space left on device '
        "(HINT: Check free disk space.)")
    # A DETAIL line may quote a row's values: never shown.
    detailed = Exception("deadlock detected\nDETAIL:  Process 7 waits for ShareLock on "
                         "transaction 9; key (source)=(/data/Jane Doe.dcm)")
    assert database_reason(detailed) == "deadlock detected"
    assert database_reason(Exception("disk \x1b[31mfull\x07")) == "disk ?[31mfull?"
    long = database_reason(Exception("x" * 1000))
    assert len(long) == REASON_LIMIT and long.endswith(" [...]")
    assert database_reason(OSError()) == "OSError"


def test_the_summary_counts_the_workers_from_the_first_failure_with_the_latest_reason() -> None:
    failures = [SaveFailure("w1:11", since=NOW - 300, last=NOW - 40, failures=5, reason="old"),
                SaveFailure("w2:12", since=NOW - 90, last=NOW - 12, failures=2, reason="new")]
    assert failing_summary(failures, NOW) == (
        "saves failing on 2 worker(s) for 5 min (the latest 12 s ago, on w2:12): new")
    assert failing_summary([], NOW) is None


def _broker_answers(monkeypatch: pytest.MonkeyPatch,
                    failures: list[SaveFailure] | None) -> None:
    """A broker that answers (an empty queue, no worker) and holds ``failures``."""
    monkeypatch.setattr(commands_query, "queue_depths", lambda app: {})
    monkeypatch.setattr(commands_query, "live_workers", lambda app: [])
    monkeypatch.setattr(commands_query, "_unsent_messages",
                        lambda cli, depths: commands_query._Unsent(0, 0, 600, 120))
    monkeypatch.setattr(commands_query, "save_failures",
                        lambda app: None if failures is None else (failures, NOW))


def _env(tmp_path: Path) -> dict[str, str]:
    # Never contacted: the broker's answers are the test's.
    return {"database_url": f"sqlite:///{tmp_path / 'mammo.db'}",
            "broker_url": "redis://127.0.0.1:1/0"}


def test_status_health_warns_and_exits_7_while_saves_fail(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failure = SaveFailure("gpu-1:4242", since=NOW - 180, last=NOW - 5, failures=9,
                          reason=database_reason(Exception(PG_DISK_FULL)))
    _broker_answers(monkeypatch, [failure])
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     **_env(tmp_path))
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE, result.output
    health = json.loads(result.stdout)[0]
    assert (health["database"], health["broker"]) == ("reachable", "reachable")
    assert health["saves_failing"] == 1
    assert health["save_failure"] == (
        "saves failing on 1 worker(s) for 3 min (the latest 5 s ago, on gpu-1:4242): could "
        'not extend file "base/16384/16417": No space left on device (HINT: Check free disk '
        "space.)")
    assert f"warning: {health['save_failure']}. The workers hand the images back" in \
        result.stderr
    # The table of plain `mammo status` says it too (its exit code is not a health check).
    result = run_cli(["status"], monkeypatch, tmp_path, **_env(tmp_path))
    assert result.exit_code == ExitCode.OK, result.output
    assert "saves failing: 1" in result.stdout
    assert "warning: saves failing on 1 worker(s) for 3 min" in result.stderr


def test_status_health_is_quiet_and_exits_0_when_no_save_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broker_answers(monkeypatch, [])
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     **_env(tmp_path))
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert (health["saves_failing"], health["save_failure"]) == (0, None)
    assert "saves failing" not in result.stderr


def test_without_a_broker_status_cannot_tell_and_says_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = run_cli(["status", "--health", "--format", "json"], monkeypatch, tmp_path,
                     database_url=f"sqlite:///{tmp_path / 'mammo.db'}")
    assert result.exit_code == ExitCode.OK, result.output
    health = json.loads(result.stdout)[0]
    assert health["broker"] == "embedded (no broker)"
    assert (health["saves_failing"], health["save_failure"]) == (None, None)
