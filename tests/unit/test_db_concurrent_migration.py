"""Processes that start together on a new database (``mammo run``, ``mammo watch`` and
workers all migrate first) all succeed: one migrates, the others wait and find it current."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.db.engine import create_db_engine, head_revisions, upgrade

PROCESSES = 6


def _settings(url: str, wal: bool = True) -> Settings:
    return Settings(database_url=url, sqlite_wal=wal, _env_file=None)  # type: ignore[call-arg]


def _upgrade_in_child(url: str, wal: bool, start: Any, results: Any) -> None:
    engine = create_db_engine(_settings(url, wal))
    start.wait()
    try:
        results.put(("ok", *upgrade(engine)))
    except Exception as exc:  # reported to the test, which shows it
        results.put(("error", repr(exc), None))
    finally:
        engine.dispose()


def _upgrade_together(url: str, wal: bool = True) -> list[tuple[str, str | None, str | None]]:
    # Spawned, not forked: each child starts from a fresh interpreter and builds its own
    # engine, whatever earlier tests left in this process (a forked child inherited state
    # that hung every child after tests/integration/test_save_failures.py had run).
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    children = [ctx.Process(target=_upgrade_in_child, args=(url, wal, start, results))
                for _ in range(PROCESSES)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
    return outcomes


def _assert_one_migrated(url: str, outcomes: list[tuple[str, str | None, str | None]]) -> None:
    heads = "+".join(sorted(head_revisions(create_db_engine(_settings(url)))))
    assert all(kind == "ok" for kind, _, _ in outcomes), outcomes
    # The revision is read under the lock: the processes that waited saw the new schema.
    assert Counter(outcomes) == {("ok", None, heads): 1,
                                 ("ok", heads, heads): PROCESSES - 1}, outcomes


@pytest.mark.parametrize("wal", [True, False])
def test_sqlite_file_migrated_by_many_processes_at_once(tmp_path: Path, wal: bool) -> None:
    for attempt in range(3):  # a race: several rounds, each on a file no one has opened
        url = f"sqlite:///{tmp_path / f'fresh-{attempt}.db'}"
        _assert_one_migrated(url, _upgrade_together(url, wal))


def test_postgresql_migrated_by_many_processes_at_once(postgres_url: str) -> None:
    _assert_one_migrated(postgres_url, _upgrade_together(postgres_url))
