"""Batches a drop folder fills: one per watched folder and site day, named after both.

The day is the site's calendar day (MAMMO_SITE_TIMEZONE, UTC by default), from midnight to
midnight on the site's clocks: cut at UTC midnight, a Sydney site's "day" batch ran from
11:00 to 11:00 and split a morning's exam over two batches.

A submitted batch is summarised as soon as it finishes. A drop folder's day batch
"finishes" every time the queue drains, at the first file of the morning as much as at the
last of the night, so its summary is due only once its day is over: one e-mail per folder
and day, covering all of it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from pathlib import Path

from shared.timeutil import as_utc, site_day_bounds

WATCH_PREFIX = "watch:"
_NAME_LIMIT = 200  # Batch.name's column width


def watch_batch_name(root: Path, day: date) -> str:
    """``watch:<folder>:<YYYY-MM-DD>``, the folder shortened from the left if too long."""
    name = f"{WATCH_PREFIX}{root}:{day.isoformat()}"
    return name if len(name) <= _NAME_LIMIT else f"{WATCH_PREFIX}...{name[-(_NAME_LIMIT - 9):]}"


def is_watch_batch_of(root: Path, name: str | None) -> bool:
    """Is ``name`` a day batch of the drop folder ``root`` (any day's)?"""
    day = watch_batch_day(name)
    return day is not None and watch_batch_name(root, day) == name


def watch_batch_day(name: str | None) -> date | None:
    """The day of a drop-folder batch, None for any other batch."""
    if not name or not name.startswith(WATCH_PREFIX):
        return None
    try:
        return date.fromisoformat(name[-10:])
    except ValueError:
        return None


def summary_due_at(name: str | None, finished_at: datetime | None,
                   zone: tzinfo = UTC) -> datetime | None:
    """When a batch's summary is due: when it finished or, for a drop folder's day batch,
    once it has finished and its day is over at the site (``zone``, the watcher's
    MAMMO_SITE_TIMEZONE: the next midnight there, as a UTC time). None while it has not
    finished."""
    finished = as_utc(finished_at)
    if finished is None:
        return None
    day = watch_batch_day(name)
    if day is None:
        return finished
    return max(finished, site_day_bounds(day, zone)[1])
