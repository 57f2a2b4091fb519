"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from shared.formatting import FORMATS

F = TypeVar("F", bound=Callable[..., Any])


def format_option(func: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Output format.",
    )(func)


paths_argument = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path),
)


def date_range_options(func: F) -> F:
    """``--since``/``--until``: a half-open range of submission times, in UTC."""
    func = click.option("--until", type=click.DateTime(),
                        help="Submitted before this time (UTC), e.g. 2026-11-25.")(func)
    return click.option("--since", type=click.DateTime(),
                        help="Submitted at or after this time (UTC), e.g. 2026-11-24.")(func)
