"""A study UID or patient pseudonym that matches nothing is named, exit 2, as a batch number
is: an empty listing with exit 0 read as "not processed yet", a typo as a pending exam."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Study
from tests.helpers.cli import invoke_cli

UID, PSEUDONYM = "1.2.826.0.1.3680043.8.498.777", "p-0123456789abcdef"
NO_STUDY = "no exam with StudyInstanceUID 1.2.826.0.1.3680043.8.498.77; `mammo worklist`"
NO_PATIENT = "no exam of patient pseudonym p-0123; give it as the reports and `mammo worklist`"


@pytest.fixture
def database(sqlite_url: str) -> str:
    engine = create_db_engine(Settings(database_url=sqlite_url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    with make_session_factory(engine)() as session:
        session.add(Study(study_uid=UID, patient_pseudonym=PSEUDONYM))
        session.commit()
    engine.dispose()
    return sqlite_url


@pytest.mark.parametrize(("args", "error"), [
    (["results", "--study", UID[:-1]], NO_STUDY),
    (["results", "--study", UID[:-1], "--format", "json"], NO_STUDY),
    (["results", "--patient", PSEUDONYM[:6], "--format", "csv"], NO_PATIENT),
    (["results", "--study", UID, "--patient", PSEUDONYM[:6]], NO_PATIENT),
    (["rescore", "--study", UID[:-1], "--dry-run"], NO_STUDY),
])
def test_a_study_or_patient_that_matches_nothing_is_named_exit_2(
        args: list[str], error: str, database: str, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(args, monkeypatch, tmp_path, database_url=database,
                           model=str(tiny_model_dir))
    assert code == ExitCode.USAGE, out
    assert error in out and "Traceback" not in out


@pytest.mark.parametrize("args", [["results", "--study", UID, "--format", "json"],
                                  ["results", "--patient", PSEUDONYM, "--format", "json"],
                                  ["rescore", "--study", UID, "--dry-run"]])
def test_a_known_study_or_patient_without_rows_still_answers(
        args: list[str], database: str, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out = invoke_cli(args, monkeypatch, tmp_path, database_url=database,
                           model=str(tiny_model_dir))
    assert code == ExitCode.OK, out
    assert out.strip() == "[]" or "0 done image(s) not scored by" in out
