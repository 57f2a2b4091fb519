"""The database's clock: the one clock claims' leases are stamped and judged on.

Workers, their sweepers, `mammo run` and `mammo recover` may run on several hosts, whose
clocks drift apart. A lease stamped on one host's clock and judged on another's ended
early on a host running ahead (it took over images a live worker still held) and late on
one running behind (a dead worker's claim kept its images). The database is the one
thing they all share, so claims and send times take their time from it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.timeutil import utcnow


def database_now(session: Session) -> datetime:
    """The database's current time, timezone-aware UTC.

    SQLite is a file on this host: its clock is this process's, read with no round trip.
    A server's is read with ``clock_timestamp()``: the time now, where ``now()`` stays at the
    start of the session's open transaction.
    """
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    stamp: datetime = session.execute(select(func.clock_timestamp())).scalar_one()
    return stamp.astimezone(UTC)
