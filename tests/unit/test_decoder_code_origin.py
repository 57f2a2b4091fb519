"""The decoder processes run the code of the process that starts them, whatever its working
directory holds.

multiprocessing starts the decoders' forkserver as ``python -c ...``, which puts the working
directory first on its path: a ``worker/`` package there (an older checkout of this
repository, a deployment folder of that name) was imported in place of the installed code,
its ``decoder_guard`` run by ``mammo run``. Each test starts a fresh process (a script
outside the working directory, as the ``mammo`` console script is), so its forkserver is
started here and not reused from another test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.synthetic import make_exam_set
from tests.helpers.processes import mammo_env
from tests.helpers.reliability import Evidence

REPO = Path(__file__).resolve().parents[2]

_DECODE = """
import json, os, sys
from shared.imaging.model_input import ModelInputSource
from worker.decoding import ChunkDecoder, DecodeJob

def main():
    jobs = [DecodeJob(i, ModelInputSource(p, "L", None, (64, 64), 80_000_000))
            for i, p in enumerate(sys.argv[1:])]
    pool = ChunkDecoder(1)
    try:
        results = pool.decode_all(jobs)
    finally:
        pool.close()
    print(json.dumps({"results": [type(r).__name__ for r in results],
                      "env": [os.environ.get("PYTHONPATH"), os.environ.get("PYTHONSAFEPATH")]}))

if __name__ == "__main__":
    main()
"""

# As pip writes the ``mammo`` console script (the guard: each decoder imports it again).
_MAMMO = """
import sys
from producer.cli import main

if __name__ == "__main__":
    sys.exit(main())
"""


def _planted(folder: Path, marker: Path) -> Path:
    """A ``worker/`` package in ``folder`` whose modules leave ``marker`` when imported."""
    package = folder / "worker"
    package.mkdir(parents=True)
    leave = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("__init__", "decoder_guard", "decoding", "parent_death"):
        (package / f"{name}.py").write_text(leave)
    return folder


def _script(tmp_path: Path, name: str, text: str) -> Path:
    # Outside the working directory, as an installed console script is: its own folder
    # comes first on the path, not the working directory.
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(text)
    return script


def _env(env: dict[str, str]) -> dict[str, str]:
    # This checkout, importable without an install too (and before any other install).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONSAFEPATH", None)
    return env


def test_decoders_import_this_code_not_a_worker_package_in_the_working_directory(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "imported-from-the-working-directory"
    cwd = _planted(tmp_path / "deploy", marker)
    files = make_exam_set(tmp_path / "in", n_exams=1, seed=21)[:2]
    env = _env(mammo_env())
    script = _script(tmp_path, "decode.py", _DECODE)
    done = subprocess.run([sys.executable, str(script), *map(str, files)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    assert not marker.exists(), marker.read_text()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["results"] == ["Decoded", "Decoded"]
    # The process's own environment is as it was once the decoders have started.
    assert out["env"] == [env["PYTHONPATH"], None]


def test_mammo_run_from_a_folder_holding_worker_runs_none_of_it(
    tmp_path: Path, tiny_model_dir: Path, reliability: Evidence,
) -> None:
    marker = tmp_path / "imported-from-the-working-directory"
    cwd = _planted(tmp_path / "deploy", marker)
    folder = tmp_path / "exams"
    [image, *others] = make_exam_set(folder, n_exams=1, seed=22)
    for other in others:
        other.unlink()
    env = _env(mammo_env(database_url=f"sqlite:///{tmp_path / 'local.db'}",
                         model=str(tiny_model_dir), decode_processes="1"))
    script = _script(tmp_path, "mammo.py", _MAMMO)
    done = subprocess.run([sys.executable, str(script), "run", str(folder), "--format", "json"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=240,
                          check=False)
    assert not marker.exists(), marker.read_text()
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(Path(r["source"]).name, r["state"]) for r in rows] == [(image.name, "done")]
    reliability.check("decoder processes import the code of the process that starts them, "
                      "never a worker/ package in the working directory")
