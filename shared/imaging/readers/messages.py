"""Text from a file or a library made fit for a sentence a person reads.

A library's error text may quote the file's bytes ("invalid literal for int() with base 10:
b'\\x00\\x10...'"), run over many lines or hold control characters (a terminal obeys ESC, a
report shows garbage): ``summary`` makes it one short printable line, ``printable`` writes
each unprintable character as "?". The error in full belongs in the log, with its stack.
"""

from __future__ import annotations

import re

__all__ = ["LOG_LIMIT", "SUMMARY_LIMIT", "described", "printable", "summary"]

# A library's error text is repeated in a person's message at most this long, and in the log
# at most LOG_LIMIT (the stack where it was raised follows it there).
SUMMARY_LIMIT = 120
LOG_LIMIT = 2000
# A bytes literal a library quoted ("invalid literal for int() with base 10: b'\x00\x10..."),
# or a string literal holding escaped bytes: data from the file, cut short or not (CPython
# cuts such a quote at 200 characters, closing quote and all).
_QUOTED_BYTES = re.compile(
    r"""\bb(['"])(?:\\.|(?!\1).)*(?:\1|$)"""
    r"""|(['"])(?:(?!\2)[^\\]|\\[^x])*\\x[0-9a-fA-F]{2}(?:\\.|(?!\2).)*(?:\2|$)""")
# How much of an error text is looked at (the rest is never shown).
_SCANNED = 4 * LOG_LIMIT
# pydicom's preamble to what each decoding plugin said, shortened.
_ALL_PLUGINS = ("Unable to decode as exceptions were raised by all available plugins:",
                "every plugin failed:")


def printable(text: str) -> str:
    """``text`` with each character that is not printable (a control character, a line
    break, binary garbage read as text) written "?"."""
    return "".join(char if char.isprintable() else "?" for char in text)


def summary(exc: BaseException, limit: int = SUMMARY_LIMIT) -> str:
    """A library's error text for a sentence: on one line (pydicom lists one line per plugin
    tried), a quoted byte string as "<binary data>", nothing unprintable, at most ``limit``
    characters (cut ones end "[...]"), no final full stop; the error's type name when it
    says nothing else."""
    text = " ".join(line.strip() for line in str(exc)[:_SCANNED].splitlines() if line.strip())
    text = _QUOTED_BYTES.sub("<binary data>", text.replace(*_ALL_PLUGINS))
    text = printable(text).rstrip(".")
    text = text or type(exc).__name__
    if len(text) > limit:
        text = text[:limit - 6].rstrip() + " [...]"
    return text


def described(exc: BaseException, limit: int = SUMMARY_LIMIT) -> str:
    """"Type: summary" of an unexpected error, for an ``internal_error`` message; the type
    alone when its text says nothing else."""
    name, text = type(exc).__name__, summary(exc, limit)
    return name if text == name else f"{name}: {text}"
