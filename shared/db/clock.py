"""The database's clock: the one clock claims' leases are stamped and judged on.

Workers, their sweepers, `mammo run` and `mammo recover` may run on several hosts, whose
clocks drift apart. A lease stamped on one host's clock and judged on another's ended
early on a host running ahead (it took over images a live worker still held) and late on
one running behind (a dead worker's claim kept its images). The database is the one
thing they all share, so claims and send times take their time from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


@dataclass(frozen=True)
class Clocks:
    """The database's time now, and how far this host's clock (which file times are on)
    runs ahead of it, read together: a registration block's, or any judge of a file's
    time against one the database stamped."""

    now: datetime
    here_ahead_by: timedelta

    @classmethod
    def read(cls, session: Session) -> Clocks:
        now = database_now(session)
        return cls(now, utcnow() - now)

    def here(self, moment: datetime) -> datetime:
        """``moment``, a time on the database's clock, as this host's clock (the one its file
        system stamps file times on) read it."""
        return moment + self.here_ahead_by

    def written_after(self, path: Path, moment: datetime) -> bool:
        """Whether the file at ``path`` was last written after ``moment``, a time on the
        database's clock; False for a file that cannot be read (gone).

        The file's time is the one this host's file system stamped: ``moment`` is moved by
        the two clocks' difference, or a file written after it would read as written
        before on a host behind the server (a failed file completed since not retried),
        and one written before as written after on a host ahead (an unchanged failed file
        decoded again, a report older than its batch's finish taken as current)."""
        try:
            written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError:
            return False
        return written > self.here(moment)
