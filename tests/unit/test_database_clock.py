"""On SQLite the database's clock is this process's: claims read it through one function.

The database file lives on this host, so ``database_now`` costs no query there; what
stamps and judges a lease must still read it from there (on PostgreSQL the server's
time, ``tests/integration/test_claim_clock.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import clock, lifecycle
from shared.db.schema import Image
from shared.recovery import find_stuck
from shared.timeutil import as_utc
from tests.helpers.db import queued_batch, schema_sessions

# The database's clock an hour behind the test's: whatever is stamped on it is told apart.
DB_NOW = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    yield from schema_sessions(settings)


def _database_clock_at(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    monkeypatch.setattr(clock, "utcnow", lambda: when)


def test_sqlite_database_now_is_this_process_clock_in_utc_without_a_query(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    _database_clock_at(monkeypatch, DB_NOW)
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    with sessions() as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            now = clock.database_now(session)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert now == DB_NOW and now.utcoffset() == timedelta(0)
    assert statements == []


def test_claims_renewals_and_send_times_are_stamped_and_judged_on_the_database_clock(
        settings: Settings, sessions: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, ids = queued_batch(sessions, "night", 3)
    _database_clock_at(monkeypatch, DB_NOW)
    with sessions() as session:
        lifecycle.claim(session, ids[:2], token="a-worker", lease_s=settings.claim_lease_s)
        lifecycle.mark_enqueued(session, ids[2:])
        session.commit()
    assert _stamps(sessions, ids) == {ids[0]: (DB_NOW, None), ids[1]: (DB_NOW, None),
                                      ids[2]: (None, DB_NOW)}

    # One lease and a second later on the database's clock (the test's own is an hour
    # ahead of both): expired, and the heartbeat renews on that clock.
    later = DB_NOW + timedelta(seconds=settings.claim_lease_s + 1)
    _database_clock_at(monkeypatch, later)
    with sessions() as session:
        assert find_stuck(session, settings, queued_older_than_s=3600).expired_claims == ids[:2]
        assert lifecycle.claim(session, ids[1:2], token="b-worker",
                               lease_s=settings.claim_lease_s)[0].attempts == 2
        assert lifecycle.renew(session, "b-worker") == 1
    assert _stamps(sessions, ids[1:2]) == {ids[1]: (later, None)}


def _stamps(sessions: sessionmaker[Session],
            ids: list[int]) -> dict[int, tuple[datetime | None, datetime | None]]:
    """Each image's (claimed_at, enqueued_at)."""
    with sessions() as session:
        return {row.id: (as_utc(row.claimed_at), as_utc(row.enqueued_at))
                for row in session.execute(select(Image.id, Image.claimed_at,
                                                  Image.enqueued_at).where(Image.id.in_(ids)))}
