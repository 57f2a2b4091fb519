"""A listing piped into a reader that stops early (`mammo results --format csv | head -1`)
ends quietly with exit 0: since listings stream, the write after the reader left raised
EPIPE, and click exited 1, which this CLI's contract reserves for a bug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from tests.helpers.seed_results import seed_results


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_reader_that_stops_early_is_not_a_failure(tmp_path: Path, fmt: str) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    seed_results(engine, 3_000, n_batches=2)  # far past a pipe's 64 KiB buffer
    engine.dispose()
    env = {**os.environ, "MAMMO_DATABASE_URL": url}
    proc = subprocess.Popen([sys.executable, "-m", "producer", "results", "--format", fmt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    error = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, error
    assert first.strip() and "Traceback" not in error and "Broken pipe" not in error, error
