"""`mammo run` as a person runs it: again after a failure, after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.cli import invoke_cli


def _env(tmp_path: Path, model: Path) -> dict[str, str]:
    return {"database_url": f"sqlite:///{tmp_path / 'm.db'}", "model": str(model),
            "report_dir": str(tmp_path / "reports"), "chunk_size": "4"}


def test_a_second_run_of_a_folder_with_a_failed_file_still_exits_3(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The second run's table lists the broken file as failed (a copy of the first run's
    # image): a script must learn it from the exit code too.
    files = make_exam_set(tmp_path / "night", n_exams=1, seed=3)
    write_truncated_copy(files[0], tmp_path / "night" / "broken.dcm")
    env = _env(tmp_path, tiny_model_dir)
    for _ in range(2):
        code, out = invoke_cli(["run", str(tmp_path / "night"), "--format", "json"],
                               monkeypatch, tmp_path, **env)
        assert code == ExitCode.IMAGES_FAILED, out
    rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    assert [r["state"] for r in rows if r["source"].endswith("broken.dcm")] == ["failed"]
