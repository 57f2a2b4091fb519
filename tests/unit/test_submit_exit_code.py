"""`mammo submit` exits as `mammo run` does: 3 when files were rejected at intake (recorded
as failed), or are copies of images that failed before, so a script that checks only the
exit code learns of them. It exited 0 even when every file was refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli


@pytest.mark.parametrize(("good", "bad", "expected"), [
    (0, 2, ExitCode.IMAGES_FAILED),
    (1, 1, ExitCode.IMAGES_FAILED),
    (1, 0, ExitCode.OK),
])
def test_submit_exits_3_when_files_are_rejected_at_intake(
    good: int, bad: int, expected: ExitCode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    redis_url: str,
) -> None:
    folder = tmp_path / "in"
    if good:
        make_exam_set(folder, n_exams=good, seed=4)
    folder.mkdir(exist_ok=True)
    for i in range(bad):
        (folder / f"scan-{i}.png").write_bytes(b"not a PNG: transfer %d went wrong" % i)
    env = {"broker_url": redis_url, "database_url": f"sqlite:///{tmp_path / 'm.db'}"}
    code, out = invoke_cli(["submit", str(folder), "--json"], monkeypatch, tmp_path, **env)
    assert code == expected, out
    summary = json.loads(out[out.index("{"):out.rindex("}") + 1])  # printed all the same
    assert summary["rejected"] == bad and summary["queued"] == 4 * good
    code, out = invoke_cli(["submit", str(folder), "--json"], monkeypatch, tmp_path, **env)
    assert code == expected, out  # copies of the refused files: their failure stands
    again = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert again["rejected"] == 0 and again["duplicates_failed"] == bad
