"""`mammo db --help` and `mammo db upgrade --help` say how to go back from an upgrade.

Upgrade probe: `mammo db downgrade` answered "No such command 'downgrade'. Did you mean
'upgrade'?", and neither help said that going back means a backup made before: the first
command of a new release migrates the database. Both helps now give README's backup
commands and say that there is no downgrade.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli.main import cli

BACKUPS = ('pg_dump -Fc mammo > mammo-before-upgrade.dump',
           'sqlite3 mammo.db ".backup mammo-before-upgrade.db"')
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("args", [["db", "--help"], ["db", "upgrade", "--help"]])
def test_the_db_help_says_to_back_up_first_and_how_to_go_back(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    readme = " ".join(README.read_text(encoding="utf-8").split())
    for command in BACKUPS:
        assert command in text and command in readme  # the same commands as README's
    assert "There is no downgrade command: to go back, restore that backup and install " \
           "the earlier release" in text
    assert "There is no `mammo db downgrade`" in readme
