"""Run the ``mammo`` CLI in-process with a clean ``MAMMO_*`` environment."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from producer.cli.main import cli


def invoke_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
               **env: str) -> tuple[int, str]:
    """Exit code and output (stdout and stderr) of ``mammo ARGS`` run in ``tmp_path``,
    with only the given settings (``database_url="..."`` sets ``MAMMO_DATABASE_URL``).

    A traceback (an exception other than the exit) fails the calling test."""
    result = run_cli(args, monkeypatch, tmp_path, **env)
    return result.exit_code, result.output


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
            **env: str) -> Result:
    """``invoke_cli``'s run, whole: ``.stdout`` and ``.stderr`` apart as well."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("MAMMO_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"MAMMO_{key.upper()}", value)
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


Mammo = Callable[..., tuple[int, str]]


def mammo_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Mammo:
    """``mammo(*args)``: ``invoke_cli`` with these settings, in ``tmp_path``."""
    def mammo(*args: str) -> tuple[int, str]:
        return invoke_cli(list(args), monkeypatch, tmp_path, **env)
    return mammo
