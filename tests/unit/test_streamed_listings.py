"""`mammo results`, `mammo worklist` and `mammo report worklist` write their CSV and JSON
row by row from a streamed query: a year of results (132,570 images) took 1 GB of memory,
growing 7.6 KB a row, and a container with a 1-2 GB limit was killed. The outputs stay the
same bytes as the whole-list writers gave (digests below, taken from them on the fixture
of tests/helpers/listing_fixture.py, identical on SQLite and PostgreSQL).

And `--model-version` matches each image's latest prediction: a version whose predictions
were all replaced by a rescore printed a bare header, as if it had scored nothing."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import insert

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import ExamResult
from shared.formatting import render
from shared.queries import RESULT_KEYS, ResultFilter, iter_results
from shared.reports.worklist import (
    FLAT_WORKLIST_KEYS,
    WorklistFilter,
    flat_worklist_row,
    iter_worklist,
)
from tests.helpers.cli import run_cli
from tests.helpers.listing_fixture import listing_outputs, seed_listings
from tests.helpers.seed_results import seed_results

# sha256 (first 16 digits) of each listing's exit code and stdout (or file), and of its
# stderr, as the code before streaming printed them (results-mv100-replaced's stderr: the
# note added since; the worklist digests: retaken when rows gained the exam PDF's
# "... read with notes: ..." flags of their views' input notes, the only bytes changed; the
# worklist JSON digests: retaken when per_breast.<side> gained own_p_malignant, the only key
# added, nothing else changed; every worklist digest: retaken when rows gained ``priority``,
# the only key and column added: with it removed the CSV and JSON are the bytes before).
EXPECTED: dict[bool, dict[str, tuple[str, str]]] = {
    False: {
        "results.csv": ("ac685d2c34112325", "e3b0c44298fc1c14"),
        "results.json": ("437b2c0e2b0d3de2", "e3b0c44298fc1c14"),
        "results.table": ("f6f935a7b343e1eb", "e3b0c44298fc1c14"),
        "results-batch2.csv": ("84bb66481668edef", "e3b0c44298fc1c14"),
        "results-batch3.json": ("b681a78fb85645c5", "e3b0c44298fc1c14"),
        "results-batch3-limit.csv": ("852b7276761d7064", "c5f4eb4649efc209"),
        "results-failed.csv": ("fde053ceb5ddbe54", "e3b0c44298fc1c14"),
        "results-since.json": ("83c57e61dc434cb6", "e3b0c44298fc1c14"),
        "results-mv110.csv": ("decca70e8f41bc5a", "e3b0c44298fc1c14"),
        "results-mv100.json": ("a6a8b70cd21c0f06", "e3b0c44298fc1c14"),
        "results-mv100-replaced.csv": ("62f49599b6e28022", "e216059b1ad0538b"),
        "results-page.csv": ("ffbac4177c902513", "b23fe647137dca42"),
        "results-page.json": ("6073f30df128d514", "b23fe647137dca42"),
        "results-past.json": ("0ea6b7a1680fcbec", "e3b0c44298fc1c14"),
        "worklist.csv": ("0822060ad98ba21e", "e3b0c44298fc1c14"),
        "worklist.json": ("fcb7beca985b1317", "e3b0c44298fc1c14"),
        "worklist.table": ("9654c2f60b07f7a6", "e3b0c44298fc1c14"),
        "worklist-limit.csv": ("bf525cef6d685f34", "e86157d44584c14d"),
        "worklist-batch2.json": ("99eb20928c63ab54", "e3b0c44298fc1c14"),
        "worklist-since.csv": ("7a390c042091c2ab", "e3b0c44298fc1c14"),
        "report-worklist.csv": ("6535fc0b6434d8b5", "61080fd6238d5591"),
        "report-worklist.json": ("ff8365e94bff9718", "61080fd6238d5591"),
        "report-worklist-batch1.json": ("db6d1102f6987f55", "61080fd6238d5591"),
    },
    True: {
        "results.csv": ("52be21f20b2d93fd", "e3b0c44298fc1c14"),
        "results.json": ("75aa84be47a45907", "e3b0c44298fc1c14"),
        "results.table": ("f6f935a7b343e1eb", "e3b0c44298fc1c14"),
        "results-batch2.csv": ("b6bb884e6d047f81", "e3b0c44298fc1c14"),
        "results-batch3.json": ("b681a78fb85645c5", "e3b0c44298fc1c14"),
        "results-batch3-limit.csv": ("852b7276761d7064", "c5f4eb4649efc209"),
        "results-failed.csv": ("fde053ceb5ddbe54", "e3b0c44298fc1c14"),
        "results-since.json": ("df2ff1d4c8ea07dd", "e3b0c44298fc1c14"),
        "results-mv110.csv": ("7be224c3bad478e7", "e3b0c44298fc1c14"),
        "results-mv100.json": ("a6a8b70cd21c0f06", "e3b0c44298fc1c14"),
        "results-mv100-replaced.csv": ("62f49599b6e28022", "e216059b1ad0538b"),
        "results-page.csv": ("ffbac4177c902513", "b23fe647137dca42"),
        "results-page.json": ("6073f30df128d514", "b23fe647137dca42"),
        "results-past.json": ("0ea6b7a1680fcbec", "e3b0c44298fc1c14"),
        "worklist.csv": ("9202b1e39a254194", "e3b0c44298fc1c14"),
        "worklist.json": ("d26697b2fdea84d7", "e3b0c44298fc1c14"),
        "worklist.table": ("6f2bb64b5f3bde73", "e3b0c44298fc1c14"),
        "worklist-limit.csv": ("9998fc04a3c2d21e", "e86157d44584c14d"),
        "worklist-batch2.json": ("5ca174dc3094e151", "e3b0c44298fc1c14"),
        "worklist-since.csv": ("0d64c2667a529421", "e3b0c44298fc1c14"),
        "report-worklist.csv": ("0bad3a991bc8564c", "61080fd6238d5591"),
        "report-worklist.json": ("c7185a90b50f80b7", "61080fd6238d5591"),
        "report-worklist-batch1.json": ("db6d1102f6987f55", "61080fd6238d5591"),
    },
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return (f"sqlite:///{tmp_path / 'listings.db'}" if backend == "sqlite"
            else request.getfixturevalue("postgres_url"))


def _seeded(url: str, *, shared_name: bool) -> None:
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    seed_listings(engine, shared_name=shared_name)
    engine.dispose()


@pytest.mark.parametrize("shared_name", [False, True], ids=["names", "shared-name"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_streamed_outputs_are_the_bytes_the_whole_list_writers_gave(
        backend: str, shared_name: bool, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = _url(backend, request, tmp_path)
    _seeded(url, shared_name=shared_name)
    outputs = listing_outputs(url, monkeypatch, tmp_path)
    found = {name: (_digest(f"{code}\n".encode() + out), _digest(err))
             for name, (code, out, err) in outputs.items()}
    wrong = {name: outputs[name] for name, digests in EXPECTED[shared_name].items()
             if found[name] != digests}
    assert not wrong, wrong


class _Sink:
    """A file that keeps nothing: what is measured is the writer's memory, not the output."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, text: str) -> int:
        self.written += len(text)
        return len(text)

    def flush(self) -> None:
        pass


def _peak(write: Callable[[Console], int]) -> tuple[int, int]:
    """(rows written, tracemalloc's peak in bytes) of one listing written to a sink."""
    sink = _Sink()
    # Part of what the unmeasured listing before warms (SQLAlchemy's weakly held caches) is
    # kept alive only by garbage in reference cycles. When a collection freed it during a
    # measured listing, that listing built it again (about 375 KB), more often during the
    # longer one: CI measured worklist-csv at 469 KB for 2,000 images and 723 KB for 20,000
    # (1.54), and a run alone gave 464 and 708 KB. Collected here, it is built again in
    # every measured listing: 2,000 and 20,000 images alike.
    gc.collect()
    tracemalloc.start()
    try:
        rows = write(Console(file=sink))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.written > 0
    return rows, peak


def _exam_results(engine: object, n_studies: int) -> None:
    rows = [{"study_id": s + 1, "version": 1, "status": "complete", "reason": "complete",
             "label": "benign", "p_malignant": (s % 97) / 97, "suspicion": 1 + s % 10,
             "per_breast": {"L": {"suspicion": 1 + s % 10, "own_suspicion": 1 + s % 10}},
             "views": ["L-CC", "R-CC", "L-MLO", "R-MLO"], "missing_views": [],
             "flags": ["seeded"], "n_images": 4, "n_failed": 0, "signature": f"s{s}"}
            for s in range(n_studies)]
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(ExamResult), rows[start:start + 5000])


def _listing_peak(listing: str, n_images: int, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> int:
    # Blocks far smaller than either listing: what is left is what grows with the rows.
    monkeypatch.setattr("shared.queries.FETCH_BLOCK", 100)
    monkeypatch.setattr("shared.reports.worklist.FETCH_BLOCK", 100)
    url = f"sqlite:///{tmp_path / f'{n_images}.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    seed_results(engine, n_images, n_batches=4)
    _exam_results(engine, n_images // 4)
    kind, fmt = listing.split("-")
    with make_session_factory(engine)() as session:

        def write(console: Console) -> int:
            if kind == "results":
                return render(iter_results(session, ResultFilter()), fmt, keys=RESULT_KEYS,
                              console=console)
            rows = iter_worklist(session, WorklistFilter(), report_dir=tmp_path)
            return render(rows if fmt == "json" else map(flat_worklist_row, rows), fmt,
                          keys=FLAT_WORKLIST_KEYS, console=console)

        write(Console(file=_Sink()))  # type: ignore[arg-type]  # warm: compiled SQL
        rows, peak = _peak(write)
    engine.dispose()
    assert rows >= n_images // 4
    return peak


@pytest.mark.parametrize("listing", ["results-csv", "results-json", "worklist-csv",
                                     "worklist-json"])
def test_a_listing_s_memory_does_not_grow_with_its_rows(
        listing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = (_listing_peak(listing, n, tmp_path, monkeypatch) for n in (2_000, 20_000))
    # The whole-list writers: 10 times the rows, 6-10 times the memory.
    assert large < 1.5 * small, (small, large)


def _results(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
             *args: str) -> tuple[int, str, str]:
    result = run_cli(["results", *args, "--format", "csv"], monkeypatch, tmp_path,
                     database_url=url)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_whose_predictions_were_all_replaced_says_so(
        backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    url = _url(backend, request, tmp_path)
    _seeded(url, shared_name=False)
    # Batch 2's images were scored by 1.0.0, then all scored again by 1.1.0.
    for args in (["--batch", "2"], ["--batch", "2", "--label", "malignant"],
                 ["--study", "1.2.3.4"]):
        code, out, err = _results(url, monkeypatch, tmp_path, "--model-version", "1.0.0",
                                  *args)
        assert code == ExitCode.OK
        assert out.splitlines() == [",".join(RESULT_KEYS)]
        assert err.count("\n") == 1, err
        assert ("every prediction of model version 1.0.0 among the images selected was "
                "replaced by a later scoring") in err
        assert "latest prediction only" in err
    # Latest for some images: those are listed, and no note.
    code, out, err = _results(url, monkeypatch, tmp_path, "--model-version", "1.0.0")
    assert code == ExitCode.OK and len(out.splitlines()) > 1 and "replaced" not in err
    # Latest for some, left out by another filter or a page past them: no note either.
    for args in (["--label", "benign", "--batch", "1", "--min-score", "10"],
                 ["--offset", "1000"]):
        code, out, err = _results(url, monkeypatch, tmp_path, "--model-version", "1.0.0",
                                  *args)
        assert code == ExitCode.OK and len(out.splitlines()) == 1 and "replaced" not in err
    # A version that scored nothing here is no note: a version no model has stays exit 2.
    code, out, err = _results(url, monkeypatch, tmp_path, "--model-version", "2.0",
                              "--batch", "2")
    assert code == ExitCode.OK and "replaced" not in err
    code, out, err = _results(url, monkeypatch, tmp_path, "--model-version", "9.9.9")
    assert code == ExitCode.USAGE, err
