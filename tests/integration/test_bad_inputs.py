"""A corpus of bad inputs through a real `mammo worker`: each fails with its reason, alone.

Every kind in ``tests.helpers.bad_inputs.LEGEND`` is written over a file that was already
queued (a valid image at submit time), so the worker's decoder, not the producer's header
check, meets it, interleaved with good images in the same chunks. Afterwards each bad file
is ``failed`` with the reason code the legend gives, every good image is ``done`` with one
prediction, and the worker's pool processes are the ones it started with (none died, and
no decoder process under them crashed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.bad_inputs import LEGEND, MAX_PIXELS, good_dicom, write_kind
from tests.helpers.db import tally
from tests.helpers.processes import (
    WorkerProcess,
    child_pids,
    mammo_env,
    run_mammo,
    wait_for,
    without_file_permission_bypass,
)
from tests.helpers.reliability import Evidence

pytestmark = pytest.mark.integration


def test_every_bad_input_kind_fails_with_its_reason_and_harms_nothing(
    tmp_path: Path, redis_url: str, postgres_url: str, tiny_model_dir: Path,
    reliability: Evidence,
) -> None:
    assert len(LEGEND) >= 25 and len({k.name for k in LEGEND}) == len(LEGEND)
    folder = tmp_path / "in"
    folder.mkdir()
    placeholders = {}
    for i, kind in enumerate(LEGEND):  # good, bad, good, bad...: every chunk holds both
        good_dicom(folder / f"{i:02d}a-good.dcm", 1000 + i)
        placeholders[kind.name] = good_dicom(folder / f"{i:02d}b-{kind.name}{kind.suffix}",
                                             2000 + i)
    n = 2 * len(LEGEND)
    env = mammo_env(broker_url=redis_url, database_url=postgres_url, model=str(tiny_model_dir),
                    chunk_size="8", max_image_pixels=str(MAX_PIXELS))
    done = run_mammo(["submit", str(folder), "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queued"] == n
    for i, kind in enumerate(LEGEND):
        write_kind(kind, placeholders[kind.name], 3000 + i)

    worker = WorkerProcess(env, tmp_path, tmp_path / "worker.log", "--concurrency", "2",
                           wrapper=without_file_permission_bypass())
    try:
        wait_for(lambda: len(child_pids(worker.proc.pid)) == 2, timeout=60,
                 what="the worker's 2 pool processes", on_timeout=worker.log)
        pool = sorted(child_pids(worker.proc.pid))
        wait_for(lambda: tally(postgres_url).terminal == n, timeout=180,
                 what="every image to end", on_timeout=worker.log)
        pool_after = sorted(child_pids(worker.proc.pid))
    finally:
        worker.stop()
    log = worker.log()
    t = tally(postgres_url)
    observed = {Path(source).name: code for source, code in t.failures.items()}
    kinds = [{"kind": k.name, "expected": k.expected.value,
              "observed": observed.get(placeholders[k.name].name, "not failed")}
             for k in LEGEND]
    wrong = [k for k in kinds if k["observed"] != k["expected"]]
    assert not wrong, wrong
    assert t.failed == len(LEGEND) and t.done == len(LEGEND), t
    assert t.predictions == len(LEGEND) and t.max_predictions_per_image == 1, t
    assert pool_after == pool, f"pool processes changed: {pool} -> {pool_after}\n{log}"
    assert "WorkerLostError" not in log and "internal_error" not in log, log
    assert "decoder process died" not in log, log  # nor did any of their decoder processes
    reliability.inputs(kinds, good=len(LEGEND), good_done=t.done,
                       workers_died=len(set(pool) - set(pool_after)))
