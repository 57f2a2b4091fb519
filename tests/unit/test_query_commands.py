"""The query and report commands on a small seeded database: what they print and write."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.db.schema import Image, Study
from tests.helpers.cli import invoke_cli
from tests.helpers.seed_results import seed_results


def _engine(url: str) -> Engine:
    engine = create_db_engine(Settings(database_url=url, broker_url=None,  # type: ignore[call-arg]
                                       _env_file=None))
    ensure_schema(engine)
    return engine


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    """16 done images in 2 batches (batch 1: studies 1 and 3, batch 2: studies 2 and 4)."""
    url = f"sqlite:///{tmp_path / 'seeded.db'}"
    engine = _engine(url)
    seed_results(engine, 16, n_batches=2, seed=3)
    engine.dispose()
    return url


def _mammo(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           url: str) -> tuple[int, str]:
    return invoke_cli(args, monkeypatch, tmp_path, database_url=url,
                      report_dir=str(tmp_path / "reports"))


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_formulas_in_the_data_are_text_in_every_csv(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    engine = _engine(seeded)
    with engine.begin() as conn:
        conn.execute(update(Study).where(Study.id == 1).values(accession_number="=1+2"))
        conn.execute(update(Image).where(Image.id == 1).values(
            state="failed", error_code="unreadable",
            error_message='=HYPERLINK("http://x","y").dcm is not readable'))
    engine.dispose()
    code, out = _mammo(["worklist", "--format", "csv"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert "'=1+2" in {r["accession_number"] for r in _csv_rows(out)}
    code, out = _mammo(["results", "--format", "csv"], monkeypatch, tmp_path, seeded)
    assert code == ExitCode.OK, out
    assert _csv_rows(out)[0]["error_message"].startswith("'=HYPERLINK(")
    for args, key, expected in (
            (["report", "worklist", "--format", "csv"], "accession_number", "'=1+2"),
            (["report", "batch", "1", "--format", "csv"], "error_message", "'=HYPERLINK(")):
        code, out = _mammo([*args, "-o", str(tmp_path / "x.csv")], monkeypatch, tmp_path,
                           seeded)
        assert code == ExitCode.OK, out
        written = _csv_rows((tmp_path / "x.csv").read_text(encoding="utf-8"))
        assert any(r[key].startswith(expected) for r in written), written
