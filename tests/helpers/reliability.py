"""Evidence for the README reliability section, recorded by the tests that produce it.

A test asks for the ``reliability`` fixture and records what it injected and measured
(a fault and the images lost/duplicated after it, the input kinds it tried, peak memory
under load). Only tests that PASS contribute: at the end of the session their records are
merged, per test id, into ``build/reliability.json`` (``MAMMO_RELIABILITY_RECORD`` moves
it), so running one test file refreshes its own entries and keeps the others.
``tests/benchmarks/reliability_report.py`` renders the README section from that file:
no figure in it is typed by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.db import Tally

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RECORD = REPO / "build" / "reliability.json"
_KEY = pytest.StashKey["Evidence"]()
_PASSED = pytest.StashKey[dict[str, list[dict[str, Any]]]]()


@dataclass
class Evidence:
    """What one test recorded; kept only if the test passes."""

    test: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def fault(self, fault: str, *, expected: int, tally: Tally, **details: Any) -> None:
        """A fault injected and the outcome counted in the database afterwards."""
        self.entries.append({**details,
            "type": "fault", "fault": fault, "images": expected,
            "done": tally.done, "failed": tally.failed,
            "lost": tally.lost(expected), "duplicated": tally.duplicated,
            "extra_rows": max(tally.images - expected, 0),
        })

    def inputs(self, kinds: list[dict[str, str]], *, good: int, good_done: int,
               workers_died: int) -> None:
        """Bad-input kinds tried: each with its expected and observed reason code."""
        self.entries.append({"type": "inputs", "kinds": kinds, "good": good,
                             "good_done": good_done, "workers_died": workers_died})

    def load(self, **figures: Any) -> None:
        """A load run: images, workers, wall time, peak memory per process."""
        self.entries.append({"type": "load", **figures})

    def check(self, check: str, **details: Any) -> None:
        """A security or transport property checked end to end."""
        self.entries.append({"type": "check", "check": check, **details})


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Evidence:
    evidence = Evidence(request.node.nodeid)
    request.node.stash[_KEY] = evidence
    return evidence


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    evidence = item.stash.get(_KEY, None)
    if evidence is None or report.when != "call" or not report.passed or not evidence.entries:
        return
    item.session.stash.setdefault(_PASSED, {})[evidence.test] = evidence.entries


def pytest_sessionfinish(session: pytest.Session) -> None:
    passed = session.stash.get(_PASSED, {})
    if passed:
        merge_records(record_path(), passed)


def record_path() -> Path:
    return Path(os.environ.get("MAMMO_RELIABILITY_RECORD") or DEFAULT_RECORD)


def merge_records(path: Path, passed: dict[str, list[dict[str, Any]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers each finish their own session and merge here: one at a time,
    # or the last to write drops the others' entries.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(path, passed)


def _merge(path: Path, passed: dict[str, list[dict[str, Any]]]) -> None:
    data = load_records(path)
    stamp = {"at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
             # Wall times depend on what else ran: say how busy the machine was.
             "load_average": round(os.getloadavg()[0], 1)}
    for test, entries in passed.items():
        data["tests"][test] = {**stamp, "entries": entries}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def load_records(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"tests": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_entries(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(test id, the test's stamp, one entry) over every recorded entry, by test id."""
    for test in sorted(data["tests"]):
        record = data["tests"][test]
        for entry in record["entries"]:
            yield test, record, entry


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() or "unknown"
