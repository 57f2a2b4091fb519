"""UTC timestamps. Reads go through ``as_utc``: SQLite returns naive datetimes, and
PostgreSQL aware ones in its session's time zone.

Every stored and printed time is UTC. The site's calendar (MAMMO_SITE_TIMEZONE) decides
only where a day begins and ends: a drop folder's day batch, and a ``--since`` date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import overload


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime: a naive one is taken as UTC (every stored time
    is), an aware one is converted, so its wall clock is UTC's (a server in Berlin hands
    back 00:30+01:00 for 23:30 UTC; printed as it came, that read "00:30 UTC", a day late)."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def utc_text(value: datetime, *, seconds: bool = True) -> str:
    """``value`` as "YYYY-MM-DD HH:MM[:SS] UTC", converted to UTC first, so the label is
    true of a time read in another zone too."""
    shown = as_utc(value).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{shown} UTC"


def site_day(moment: datetime, zone: tzinfo) -> date:
    """The site's calendar day at ``moment`` (naive: UTC). 23:58 UTC on 6 December is
    10:58 on 7 December in Sydney: its day is the 7th, not the 6th."""
    return as_utc(moment).astimezone(zone).date()


def site_midnight(day: date, zone: tzinfo) -> datetime:
    """The UTC instant ``day`` begins at the site. Built from the wall clock with the
    zone's rules (not by adding 24 h to the day before): a day on which clocks change is
    23 or 25 hours long. A midnight that does not exist (clocks jump from 00:00 to 01:00)
    is read with the offset before the jump, which is the instant of the jump itself."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def site_day_bounds(day: date, zone: tzinfo) -> tuple[datetime, datetime]:
    """The UTC instants the site's ``day`` starts at and ends at (the next day's start)."""
    return site_midnight(day, zone), site_midnight(day + timedelta(days=1), zone)


def site_local_to_utc(value: datetime, zone: tzinfo) -> datetime:
    """``value`` as UTC: a naive one is the site's wall clock, an aware one is converted.
    An hour that occurs twice when clocks go back is read as the first (earlier) one."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=zone).astimezone(UTC)


def site_day_text(day: date, zone: tzinfo) -> str:
    """``day`` with the UTC period it covers: "2026-12-07 (Australia/Sydney): 2026-12-06
    13:00 to 2026-12-07 13:00 UTC", so a reader of UTC times knows where the day was cut."""
    start, end = site_day_bounds(day, zone)
    return (f"{day.isoformat()} ({zone}): {start:%Y-%m-%d %H:%M} to "
            f"{utc_text(end, seconds=False)}")
