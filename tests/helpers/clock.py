"""A host whose clock is off from the database server's, for the clock tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import clock
from shared.timeutil import as_utc


def host_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta,
                      modules: Iterable[ModuleType], *, raising: bool = False) -> None:
    """Set this process's clock ``offset`` away from the database server's, as each of
    ``modules`` reads it.

    Every module that reads the clock imports ``utcnow`` by name (``from shared.timeutil
    import utcnow``), so patching ``shared.timeutil`` alone would skew none of them: each
    module's own name is replaced. ``raising=False`` (the default) keeps a module that no
    longer reads this host's clock in a test's list, so that one that starts to again is
    skewed with the rest; ``raising=True`` insists that every module still reads it.
    """
    def skewed() -> datetime:
        return datetime.now(UTC) + offset

    for module in modules:
        monkeypatch.setattr(module, "utcnow", skewed, raising=raising)


def server_now(sessions: sessionmaker[Session]) -> datetime:
    """The database server's time, timezone-aware UTC, read apart from any module under
    test (``now()`` of a fresh transaction: the moment it was asked)."""
    with sessions() as session:
        stamp = as_utc(session.execute(select(func.now())).scalar_one())
    assert stamp is not None
    return stamp


def database_clock_off_by(monkeypatch: pytest.MonkeyPatch, offset: timedelta,
                          modules: Iterable[ModuleType]) -> None:
    """Set the database's clock ``offset`` away from this host's, as each of ``modules``
    reads it (``database_now``, imported by name): what they stamp rows with, and what
    ``Clocks.read`` finds (``shared.db.clock`` among them).

    For what a test cannot skew with this host's clock: the times this host's file system
    stamps by itself (an inode's change time cannot be set), which stay on the real one.
    """
    real = clock.database_now

    def skewed(session: Session) -> datetime:
        return real(session) + offset

    for module in modules:
        monkeypatch.setattr(module, "database_now", skewed, raising=True)
