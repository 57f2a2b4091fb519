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
