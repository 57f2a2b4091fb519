"""`mammo run`: the embedded default needs no servers at all.

The run happens inside a fresh network namespace (``unshare -n``) where not even loopback
is up, so any attempt to reach Redis or PostgreSQL would fail the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from shared.db.schema import Prediction
from shared.synthetic import make_exam_set, write_truncated_copy
from tests.helpers.processes import MAMMO, mammo_env, run_mammo


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_run_completes_without_any_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "exams"
    files = make_exam_set(folder, n_exams=3, seed=3)
    write_truncated_copy(files[0], folder / "broken.dcm")
    # One image under two names (it ran forever once: the run waited for the copy too), and
    # a file named by a Latin-1 system, which the database cannot store as it is.
    shutil.copy(files[1], folder / "copy-of-one.dcm")
    shutil.copy(files[2], folder / os.fsdecode(b"caf\xe9.dcm"))
    db = tmp_path / "local.db"
    env = mammo_env(database_url=f"sqlite:///{db}", model=str(tiny_model_dir), chunk_size="5")
    prefix = ["unshare", "-n"] if _can_unshare() else []
    if not prefix:
        pytest.skip("unshare -n is not permitted here; cannot prove the absence of servers")
    cmd = [*prefix, *MAMMO, "run", str(folder), "--format", "json"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, check=False)
    assert done.returncode == 3, done.stderr  # 3: the job ran, some images failed
    rows = json.loads(done.stdout)
    assert len(rows) == 15  # the copy is listed too, carrying its original's result
    states = sorted(r["state"] for r in rows)
    assert states == ["done"] * 13 + ["failed"] * 2
    [copy] = [r for r in rows if r["duplicate_of"] is not None]
    # Whichever of the two names was read first is the image; the other is its copy.
    assert Path(copy["source"]).name in {"copy-of-one.dcm", files[1].name}
    assert copy["state"] == "done"
    failed = {r["error_code"]: r["source"] for r in rows if r["state"] == "failed"}
    assert failed["truncated"].endswith("broken.dcm")
    assert failed["bad_file_name"].endswith("caf\\xe9.dcm")
    assert (tmp_path / "reports").is_dir() and any((tmp_path / "reports").glob("batch-*.csv"))
    said = " ".join(done.stderr.split())  # as wrapped to the terminal's width
    assert "15 file(s): 13 new, 1 already submitted, 1 rejected at intake" in said

    # Running the same folder again processes nothing (no second prediction for any image)
    # and lists every file with the result already known.
    again = run_mammo(["run", str(folder), "--format", "json"], env, tmp_path)
    assert again.returncode == 3, again.stderr  # its listing still shows the two failures
    repeated = json.loads(again.stdout)
    assert len(repeated) == 15 and all(r["duplicate_of"] is not None for r in repeated)
    assert sorted(r["state"] for r in repeated) == states
    said = " ".join(again.stderr.split())
    assert "15 file(s): 0 new, 15 already submitted, 0 rejected at intake" in said
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Prediction)).scalar_one() == 12
    engine.dispose()


def test_run_without_a_model_says_how_to_get_one(tmp_path: Path) -> None:
    folder = tmp_path / "exams"
    make_exam_set(folder, n_exams=1, seed=1)
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'x.db'}", model=str(tmp_path / "nope"))
    done = run_mammo(["run", str(folder)], env, tmp_path)
    assert done.returncode == 5
    assert "MAMMO_MODEL" in done.stderr and "Traceback" not in done.stderr
