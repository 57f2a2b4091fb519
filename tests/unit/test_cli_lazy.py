"""`mammo` imports a command's module only when that command runs: `mammo --version` took
2.5 s because every command module (pydicom, OpenCV, celery...) was imported up front.

`mammo --help` lists the commands from producer.cli.main.COMMANDS without importing them;
these tests hold that table to the real commands, and pin what startup may import.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from producer.cli.main import COMMANDS, cli, load_command
from shared.db.engine import head_revisions
from shared.imaging.reader_version import READER_VERSION

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(path.stem for path in (REPO / "producer" / "cli").glob("commands_*.py"))

# Libraries that take from a tenth of a second (OpenCV) to seconds (TensorFlow) to import.
NEVER_AT_STARTUP = ("tensorflow", "keras", "pydicom", "matplotlib", "reportlab", "cv2", "PIL",
                    "numpy", "celery", "kombu", "alembic")
# What `mammo status`, `results`, `worklist`, `stats`, `db`, `recover` and `rescore` (cron,
# health checks, entrypoints) must not load either.
NOT_FOR_QUERIES = ("tensorflow", "keras", "pydicom", "matplotlib", "reportlab")


def _eager_cli() -> click.Group:
    """The group as it was: every command of every module, added up front."""
    commands = [command for name in MODULES
                for command in importlib.import_module(f"producer.cli.{name}").COMMANDS]
    return click.Group(cli.name, commands=commands, params=cli.params, help=cli.help,
                       context_settings=cli.context_settings)


def test_the_table_names_every_command_and_its_module() -> None:
    found = {command.name: name for name in MODULES
             for command in importlib.import_module(f"producer.cli.{name}").COMMANDS}
    assert found == {name: entry.module for name, entry in COMMANDS.items()}
    for name in COMMANDS:
        assert load_command(name).name == name


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_help_lists_every_command_as_the_commands_themselves_would(width: int) -> None:
    """Same names, order and short help as click builds from the loaded commands."""
    lazy = CliRunner().invoke(cli, ["--help"], prog_name="mammo", terminal_width=width)
    eager = CliRunner().invoke(_eager_cli(), ["--help"], prog_name="mammo",
                               terminal_width=width)
    assert lazy.exit_code == eager.exit_code == 0
    assert lazy.output == eager.output
    listed = lazy.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == sorted(COMMANDS)


def test_a_mistyped_command_is_still_offered_the_close_ones() -> None:
    result = CliRunner().invoke(cli, ["stauts"], prog_name="mammo")
    assert result.exit_code == 2
    assert "No such command 'stauts'. (Did you mean one of: 'results', 'stats', " \
           "'status'?)" in result.output


def _loaded_after(code: str, heavy: tuple[str, ...]) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def _run_main(*args: str) -> str:
    return ("from producer.cli.main import main\n"
            f"sys.argv = ['mammo', *{list(args)!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")


def test_startup_and_help_load_no_heavy_library() -> None:
    assert _loaded_after(_run_main("--help"), NEVER_AT_STARTUP) == []


def test_version_reads_the_schema_heads_from_the_scripts_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alembic, to read this release's schema heads, but nothing else heavy; no database."""
    heavy = tuple(name for name in NEVER_AT_STARTUP if name != "alembic")
    assert _loaded_after(_run_main("--version"), heavy) == []
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["--version"], prog_name="mammo")
    assert os.listdir(tmp_path) == []  # no default SQLite database made
    assert shown.exit_code == 0, shown.output
    release, _, rest = shown.output.strip().partition(" (")
    assert release == f"mammo, version {importlib.metadata.version('mammo-pipeline')}"
    assert rest == (f"readers {READER_VERSION}, database schema "
                    f"{'+'.join(sorted(head_revisions()))})")


def test_query_and_upkeep_commands_load_no_imaging_model_or_report_library() -> None:
    code = ("from producer.cli.main import load_command\n"
            "for name in ('status', 'results', 'worklist', 'stats', 'db', 'recover', "
            "'rescore'):\n"
            "    load_command(name)")
    assert _loaded_after(code, NOT_FOR_QUERIES) == []


def test_no_command_module_imports_tensorflow() -> None:
    """Each module is imported when its command runs: a producer-only install lacks TF."""
    code = "\n".join(f"import producer.cli.{name}" for name in MODULES)
    assert _loaded_after(code, ("tensorflow", "keras")) == []
