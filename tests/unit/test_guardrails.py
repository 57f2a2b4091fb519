"""The lint and type guardrails of pyproject.toml hold on every run, CI included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool", [["ruff", "check", "."], ["mypy"]])
def test_tool_is_clean(tool: list[str]) -> None:
    if shutil.which(tool[0]) is None:
        pytest.fail(f"{tool[0]} is not installed; install the test extra: pip install -e '.[test]'")
    done = subprocess.run([sys.executable, "-m", *tool], cwd=REPO, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_producer_never_imports_tensorflow() -> None:
    code = ("import producer.cli.main, producer.submission, shared.queue, worker.tasks, sys; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, "importing the producer/task modules pulled in TensorFlow"
