"""UTC timestamps. Reads go through ``as_utc``: SQLite returns naive datetimes, and
PostgreSQL aware ones in its session's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
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
