"""Optional parts of the install (pyproject's extras), and what to say when one is missing.

A producer-only install (``pip install .``) queues files and answers queries; PDF and HTML
reports need the ``reports`` extra, classifying images the ``worker`` extra. Their modules
are imported where they are first used, inside ``installed(...)``, so that a command that
needs a missing one ends with one line naming the pip command (exit 4, a configuration
problem) instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
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


# python-bidi ("bidi") and arabic-reshaper: right-to-left text in the PDFs (pdf_text).
REPORTS = Extra("reports", ("reportlab", "matplotlib", "bidi", "arabic_reshaper"))
# scikit-learn: `mammo train`/`evaluate`'s splits, metrics and baseline (both extras bring it).
WORKER = Extra("worker", ("tensorflow", "keras", "sklearn"), alternative="gpu")


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
        error = missing_extra_error(exc, needed_for, extras=(extra,))
        if error is None:
            raise
        raise error from exc


def missing_extra_error(exc: ModuleNotFoundError, needed_for: str, *,
                        extras: tuple[Extra, ...] = (REPORTS, WORKER),
                        ) -> ConfigurationError | None:
    """The error naming the extra whose module ``exc`` did not find; None for a module of
    no extra (a bug of the install or the code, which must keep its traceback)."""
    top = (exc.name or "").partition(".")[0]
    if not top or importlib.util.find_spec(top) is not None:
        return None  # installed, but broken or moved inside: not what a pip line fixes
    for extra in extras:
        if top in extra.modules:
            return ConfigurationError(missing_extra_message(extra, top, needed_for))
    return None


def require(extra: Extra, *, needed_for: str) -> None:
    """Fail now, in one line, when ``extra`` is not installed, without importing it: a
    worker's parent must not import TensorFlow before it forks (PITFALLS), yet each pool
    child would otherwise die on the import, one after another."""
    for module in extra.modules:
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(missing_extra_message(extra, module, needed_for))
