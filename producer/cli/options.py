"""Options shared by several commands, defined once."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar

import click

from shared.config import Settings
from shared.formatting import FORMATS
from shared.timeutil import as_utc, site_local_to_utc, utc_text, utcnow

F = TypeVar("F", bound=Callable[..., Any])


def format_option(func: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Output format.",
    )(func)


def _batch_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # A line break in a name ends up in e-mail headers and one-line logs: refuse control
    # characters (CR, LF, tab, NUL...) here, before anything is registered.
    if value is not None and any(unicodedata.category(ch) == "Cc" for ch in value):
        raise click.BadParameter(
            f"{value!r} contains a control character (line break, tab...): use a name on "
            "one line of printable characters")
    return value


def batch_name_option(func: F) -> F:
    """``--name`` of a new batch (``mammo run``, ``mammo submit``)."""
    return click.option("--name", callback=_batch_name,
                        help="A name for this batch, shown in status and reports.")(func)


paths_argument = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path),
)


def _site_zone(ctx: click.Context | None) -> tzinfo:
    """The running command's MAMMO_SITE_TIMEZONE: the root context holds its settings,
    loaded before any subcommand's options are parsed. UTC outside a command."""
    settings = getattr(ctx.find_root().obj, "settings", None) if ctx is not None else None
    return settings.site_zone if isinstance(settings, Settings) else UTC


class IsoTime(click.ParamType):
    """An ISO 8601 date or time. Without an offset it is the site's (MAMMO_SITE_TIMEZONE,
    UTC by default): "--since 2026-12-07" in Sydney means that day there, which began at
    13:00 UTC on the 6th. With one (``+01:00``, ``Z``) it is converted to UTC, so a local
    time copied from another system means what it says."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-24, "
                      "2026-11-24T22:00, 2026-11-24T23:00+01:00)", param, ctx)
        return site_local_to_utc(parsed, _site_zone(ctx))


def date_range_options(func: F) -> F:
    """``--since``/``--until``: a half-open range of submission times, read on the site's
    clock unless they carry an offset, compared in UTC."""
    func = click.option("--until", type=IsoTime(),
                        help="Submitted before this time (the site's, MAMMO_SITE_TIMEZONE, "
                             "unless it has an offset), e.g. 2026-11-25.")(func)
    return click.option("--since", type=IsoTime(),
                        help="Submitted at or after this time (the site's, "
                             "MAMMO_SITE_TIMEZONE, unless it has an offset), e.g. 2026-11-24 "
                             "or 2026-11-24T23:00+01:00.")(func)


def utc_range(since: datetime | None,
              until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """``--since``/``--until`` as UTC times. A range with nothing in it is a usage error:
    an empty answer would read as "nothing was submitted then". A ``--since`` still to come
    is said on stderr: a Sydney reader's "--since 2026-12-07" before 11:00 that morning
    was UTC's 7th, not yet begun, and listed nothing without a word."""
    start, end = as_utc(since), as_utc(until)
    if start is not None and start > (now := utcnow()):
        zone = _site_zone(click.get_current_context(silent=True))
        click.echo(f"note: --since was read as {utc_text(start)} (a time without an offset "
                   f"is MAMMO_SITE_TIMEZONE's, {zone}), which is still to come (now "
                   f"{utc_text(now)}): nothing can have been submitted since", err=True)
    if start is not None and end is not None and start >= end:
        raise click.BadParameter(
            f"--since {start:%Y-%m-%d %H:%M:%S} is not before --until {end:%Y-%m-%d %H:%M:%S}: "
            "the range is empty (--until is the first time left out)",
            param_hint="'--since' / '--until'")
    return start, end
