"""A real `mammo watch --after move` SIGKILLed as it files a finished image away, then
restarted: the image report still draws the image, from wherever the file now is.

The watcher used to rename the file into processed/ and only then record where it went
(``images.archived_path``); a kill in between left the row pointing at the drop folder and
the file where neither the restarted watcher nor any report looked again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from shared.db.schema import Image
from shared.enums import Laterality, View
from shared.imaging.identity import current_location, file_has_identity
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.processes import WatchProcess, mammo_env, run_mammo, wait_for

pytestmark = pytest.mark.integration
KEY = "integration-test-key-0123456789abcdef"  # synthetic files carry a PatientID

# `mammo watch`, killed (SIGKILL: nothing runs after) as it renames a dropped file into
# processed/ or failed/: just before the rename, or just after it.
_KILLED_AT_RENAME = """
import os, signal, sys
folder, after = os.path.abspath(sys.argv[1]), sys.argv[2] == "after"
real = os.replace
def replace(src, dst, **kwargs):
    mine = os.path.dirname(os.path.abspath(src)) == folder and str(src).endswith(".dcm")
    if mine and after:
        real(src, dst, **kwargs)
    if mine:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, **kwargs)
os.replace = replace
sys.argv = ["mammo", "watch", *sys.argv[3:]]
from producer.cli import main
main()
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'watch.db'}")
    yield engine
    engine.dispose()


def _row(engine: Engine) -> tuple[str, str | None, str, str]:
    with engine.connect() as conn:
        row = conn.execute(select(Image.source, Image.archived_path, Image.identity,
                                  Image.state)).one()
    return row.source, row.archived_path, row.identity, row.state


@pytest.mark.parametrize("killed", ["before", "after"])
def test_a_watcher_killed_as_it_files_an_image_leaves_it_drawn_in_the_report(
        tmp_path: Path, tiny_model_dir: Path, engine: Engine, killed: str) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    dropped, filed = incoming / "exam0000_LCC.dcm", incoming / "processed/exam0000_LCC.dcm"
    pixels = synth_mammogram(np.random.default_rng(7), size=(96, 80))
    write_dicom(dropped, pixels, study_uid="1.2.826.0.1.99", sop_uid="1.2.826.0.1.99.1",
                laterality=Laterality.LEFT, view=View.CC)
    env = mammo_env(database_url=f"sqlite:///{tmp_path / 'watch.db'}",
                    model=str(tiny_model_dir), watch_quiet_period_s="0.5",
                    watch_poll_interval_s="0.5", log_level="INFO", patient_id_key=KEY,
                    report_dir=str(tmp_path / "reports"))
    log = (tmp_path / "killed.log").open("w")
    with log:
        proc = subprocess.run(  # embedded: it scores the image itself, then files it
            [sys.executable, "-c", _KILLED_AT_RENAME, str(incoming), killed, str(incoming),
             "--after", "move"], env=env, cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, timeout=240, check=False)
    said = (tmp_path / "killed.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, said
    source, archived, identity, state = _row(engine)
    assert (source, archived, state) == (str(dropped), str(filed), "done"), said
    assert dropped.is_file() != filed.is_file()
    where = filed if killed == "after" else dropped
    assert current_location(source, archived) == str(where)
    assert file_has_identity(where, identity)

    watcher = WatchProcess(env, tmp_path, incoming, "--after", "move")  # the restart
    try:
        watcher.wait_for_log("after processing: move")  # running, and stopped by SIGTERM
        wait_for(lambda: filed.is_file() and not dropped.exists(), timeout=120,
                 what="the file filed in processed/", on_timeout=watcher.log)
    finally:
        status = watcher.stop()
    assert status == 0, watcher.log()
    assert _row(engine)[1] == str(filed)
    # The image report draws the view from the file (it says when it cannot).
    pdf = tmp_path / "image-1.pdf"
    report = run_mammo(["report", "image", "1", "-o", str(pdf)], env, tmp_path)
    assert report.returncode == 0 and pdf.stat().st_size > 0, report.stderr
    assert "not drawn in the report" not in report.stdout + report.stderr, report.stderr
