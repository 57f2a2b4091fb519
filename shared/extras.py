"""Optional parts of the install (pyproject's extras), and what to say when one is missing.

A producer-only install (``pip install .``) queues files and answers queries; PDF and HTML
reports need the ``reports`` extra, classifying images the ``worker`` extra. Their modules
are imported where they are first used, inside ``installed(...)``, so that a command that
needs a missing one ends with one line naming the pip command (exit 4, a configuration
problem) instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shared.errors import ConfigurationError


@dataclass(frozen=True)
class Extra:
    """One of pyproject's ``[project.optional-dependencies]``."""

    name: str
    modules: tuple[str, ...]  # the top-level modules it installs that the code imports
    alternative: str = ""  # another extra that also brings them, for the message


REPORTS = Extra("reports", ("reportlab", "matplotlib"))
WORKER = Extra("worker", ("tensorflow", "keras"), alternative="gpu")


def missing_extra_message(extra: Extra, module: str, needed_for: str) -> str:
    other = (f', or ".[{extra.alternative}]" on a machine with an NVIDIA GPU'
             if extra.alternative else "")
    return (f"{needed_for} needs the '{extra.name}' extra, which is not installed here (no "
            f"module named {module!r}): pip install \".[{extra.name}]\" in the checkout "
            f"(\"mammo-pipeline[{extra.name}]\" from a package index){other}.")


@contextmanager
def installed(extra: Extra, *, needed_for: str) -> Iterator[None]:
    """Imports made inside become a ``ConfigurationError`` naming ``extra`` when one of its
    modules is missing. Any other missing module is a bug of the install or the code and
    propagates unchanged, so this never hides one behind a wrong hint."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in extra.modules:
            raise
        raise ConfigurationError(missing_extra_message(extra, top, needed_for)) from exc
