"""A pool process's private temporary directory (worker.scratch): everything its process
and the decoders' forkserver make goes in there, it goes with the process, and a sweep
removes only the directories of pool processes that are gone."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from shared.synthetic import make_exam_set
from worker.scratch import PREFIX, TMPDIR_MAX, sweep

# In a process of its own: enter() changes the process's TMPDIR and tempfile directory.
_LIFE = textwrap.dedent("""
    import multiprocessing, os, sys, tempfile
    from multiprocessing import util
    from worker.decoding import ChunkDecoder, DecodeJob
    from worker.scratch import enter, leave
    from shared.imaging.model_input import ModelInputSource

    base = tempfile.gettempdir()
    enter()
    own = tempfile.gettempdir()
    assert os.path.dirname(own) == base, (own, base)
    assert os.environ["TMPDIR"] == own and util.get_temp_dir() == own
    with tempfile.NamedTemporaryFile(delete=False) as made:  # as TensorFlow's autograph
        pass
    decoder = ChunkDecoder(1)  # a forkserver, its socket in `own`
    [result] = decoder.decode_all([DecodeJob(1, ModelInputSource(
        sys.argv[1], "L", None, (64, 64), 80_000_000))])
    assert result.image_id == 1, result
    assert any(name.startswith("listener-") for name in os.listdir(own)), os.listdir(own)
    decoder.close()
    leave()
    assert not os.path.exists(own), os.listdir(own)
    print(own)
    os._exit(0)  # as a Celery pool process ends: no atexit handler runs
""")
_TOO_LONG = textwrap.dedent("""
    import logging, os, tempfile
    from worker.scratch import enter
    logging.basicConfig()
    base = tempfile.gettempdir()
    enter()
    assert tempfile.gettempdir() == base == os.environ["TMPDIR"]
    assert os.listdir(base) == []
""")


def _life(script: str, tmpdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=120, check=False, cwd=Path(__file__).parents[2],
                          env={**os.environ, "TMPDIR": str(tmpdir)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_process_s_files_and_decoders_socket_go_with_its_directory(tmp_path: Path) -> None:
    [image, *_] = make_exam_set(tmp_path / "in", n_exams=1, seed=3, fmt="png")
    # Short, as a TMPDIR is: a tmp_path may pass TMPDIR_MAX (see the next test).
    temp = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    try:
        own = _life(_LIFE, temp, str(image)).stdout.strip()
        assert Path(own).parent == temp
        assert list(temp.iterdir()) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_tmpdir_too_long_for_the_decoders_socket_is_left_as_it_is(tmp_path: Path) -> None:
    """Else the forkserver could not bind its socket ("AF_UNIX path too long") and the
    worker would decode nothing."""
    temp = tmp_path / ("x" * TMPDIR_MAX)
    temp.mkdir()
    output = _life(_TOO_LONG, temp).stderr
    assert f"TMPDIR {temp} is too long for a private temporary directory" in output
    assert f"at most {TMPDIR_MAX} bytes" in output


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_sweep_removes_only_directories_of_pool_processes_gone(tmp_path: Path) -> None:
    gone = _gone_pid()
    killed = tmp_path / f"{PREFIX}{gone}-abc"
    (killed / "pymp-x").mkdir(parents=True)
    (killed / "__autograph_generated_file1.py").write_text("")
    alive = tmp_path / f"{PREFIX}{os.getppid()}-def"
    alive.mkdir()
    # A PID this namespace does not see, its directory locked: another PID namespace's
    # live process (a container sharing this TMPDIR).
    elsewhere = tmp_path / f"{PREFIX}{gone}-ghi"
    elsewhere.mkdir()
    others = [tmp_path / f"mammo-model-{gone}-x", tmp_path / "pymp-abc",
              tmp_path / f"{PREFIX}x-1", tmp_path / f"{PREFIX}{gone}"]
    for path in others:
        path.mkdir()
    held = os.open(elsewhere, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        sweep(tmp_path)
    finally:
        os.close(held)
    assert not killed.exists()
    assert alive.is_dir() and elsewhere.is_dir()
    assert all(path.is_dir() for path in others)
