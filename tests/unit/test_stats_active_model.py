"""`mammo stats`' model section: the validation figures it prints come with what makes them a
poor guide to the counted predictions (a model that will not load, none of them its own)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import update

from models.activation import activate
from models.registry import resolve_model
from producer.cli.main import cli
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import ModelVersion
from shared.reports.stats import StatsFilter, collect_stats
from tests.helpers.seed_results import seed_results


def test_stats_flag_a_broken_model_and_predictions_it_did_not_make(
        tmp_path: Path, tiny_model_dir: Path, sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, _env_file=None)  # type: ignore[call-arg]
    engine = create_db_engine(settings)
    ensure_schema(engine)
    seeded = seed_results(engine, 40)  # scored by two registered models, not this one
    edited = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, edited)
    with (edited / "model.keras").open("ab") as weights:
        weights.write(b"\0")  # `mammo run` refuses it (exit 5); `models list`: broken
    counted = len(seeded.predictions)
    env = {"MAMMO_DATABASE_URL": sqlite_url, "MAMMO_MODEL": str(edited)}
    shown = CliRunner().invoke(cli, ["stats", "--format", "json"], env=env)
    assert shown.exit_code == 0, shown.output
    model = json.loads(shown.stdout)["active_model"]
    assert model["problem"].startswith("broken: ") and "sha256" in model["problem"]
    assert model["counted_predictions_by_it"] == 0
    assert model["note"].startswith(f"none of the {counted} counted predictions")
    table = CliRunner().invoke(cli, ["stats"], env=env)
    assert "broken: " in table.output and f"none of the {counted}" in table.output

    spec = resolve_model(str(tiny_model_dir))
    sessions = make_session_factory(engine)
    with sessions() as session:
        session.execute(update(ModelVersion).where(ModelVersion.id == 1)
                        .values(sha256=spec.sha256))  # model version 1 is this model
        session.commit()
        fine = collect_stats(session, settings.model_copy(update={"model": str(tiny_model_dir)}),
                             StatsFilter())["active_model"]
        assert fine["problem"] is None and fine["note"] is None
        assert fine["counted_predictions_by_it"] == sum(
            p["model_version_id"] == 1 for p in seeded.predictions.values())

        gone = tmp_path / "gone"
        shutil.copytree(tiny_model_dir, gone)
        activate(session, resolve_model(str(gone)))
        session.commit()
        shutil.rmtree(gone)  # the activated model: every worker refuses to start
        flagged = collect_stats(session, settings, StatsFilter())["active_model"]
        assert flagged["sha256"] == spec.sha256 and flagged["validation"] == {}
        assert flagged["problem"].startswith("broken: ") and str(gone) in flagged["problem"]
    engine.dispose()
