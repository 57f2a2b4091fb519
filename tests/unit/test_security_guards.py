"""Security guards that need no services: model integrity, bound SQL, secrets kept out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.registry import resolve_model, sealed, verify_model
from producer.cli.main import cli, keep_files_private
from shared.config import Settings
from shared.errors import ModelIntegrityError
from shared.imaging.preprocess import PREPROCESSING_VERSION
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli


def test_a_tampered_model_file_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    with (copy / "model.keras").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)


def test_a_model_for_other_preprocessing_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["preprocessing_version"] = "0"  # a genuine (sealed) model of another release
    (copy / "metadata.json").write_text(json.dumps(sealed(meta)))
    with pytest.raises(ModelIntegrityError, match="preprocessing version"):
        verify_model(resolve_model(str(copy)), preprocessing_version=PREPROCESSING_VERSION)


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> CliRunner:
    for key in [k for k in os.environ if k.startswith("MAMMO_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAMMO_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("MAMMO_PATIENT_ID_KEY", "s3cret-pseudonym-key-value")
    make_exam_set(tmp_path / "in", n_exams=1, seed=31)
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(tmp_path / "in"), "--format", "json"])
    assert result.exit_code == 0, result.output
    return runner


@pytest.mark.parametrize("hostile", ["x' OR '1'='1", "1; DROP TABLE images; --", "%' --"])
def test_cli_filters_are_bound_parameters(seeded: CliRunner, hostile: str) -> None:
    found = seeded.invoke(cli, ["results", "--study", hostile, "--format", "json"])
    # Matched as a literal UID, which no exam has: a study that matches nothing exits 2.
    assert found.exit_code == 2, found.output
    assert f"no exam with StudyInstanceUID {hostile};" in found.output
    everything = seeded.invoke(cli, ["results", "--format", "json"])
    assert len(json.loads(everything.output)) == 4  # the table survived


def test_secrets_never_reach_help_or_output(seeded: CliRunner) -> None:
    texts = [seeded.invoke(cli, ["--help"]).output]
    for command in ("run", "submit", "worker", "status", "results", "recover", "watch"):
        texts.append(seeded.invoke(cli, [command, "--help"]).output)
    texts.append(seeded.invoke(cli, ["status", "--health", "--format", "json"]).output)
    texts.append(seeded.invoke(cli, ["results", "--format", "csv"]).output)
    assert all("s3cret-pseudonym-key-value" not in text for text in texts)


def test_mammo_run_writes_its_database_and_reports_unreadable_to_other_users(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> None:
    # They hold accession numbers, pseudonyms, results and source paths; the usual umask 022
    # made every one 0644 (folders 0755).
    make_exam_set(tmp_path / "in", n_exams=1, seed=32)
    os.umask(0o022)  # conftest restores the test process's own
    code, out = invoke_cli(["run", str(tmp_path / "in")], monkeypatch, tmp_path,
                           model=str(tiny_model_dir), chunk_size="4")
    assert code == 0, out
    written = [tmp_path / "mammo.db", tmp_path / "reports",
               *(tmp_path / "reports").rglob("*")]
    assert {p.suffix for p in written} >= {".db", ".csv", ".json", ".html", ".pdf"}, written
    assert [p for p in written if p.stat().st_mode & 0o007] == []
    # A group (the reading room's) can still be granted them.
    assert all(p.stat().st_mode & 0o040 for p in written)


@pytest.mark.parametrize(("given", "kept"), [(0o022, 0o027), (0o002, 0o027), (0o077, 0o077)])
def test_the_umask_is_tightened_never_loosened(given: int, kept: int) -> None:
    os.umask(given)  # conftest restores the test process's own
    keep_files_private()
    assert os.umask(given) == kept


def test_the_settings_repr_masks_the_passwords_of_urls() -> None:
    settings = Settings(database_url="postgresql+psycopg://mammo:db-pass-1@db/mammo",
                        broker_url="redis://:broker-pass-2@redis:6379/0",
                        webhook_url="https://hooks.example/in?token=hook-pass-3",
                        webhook_secret="hook-secret", _env_file=None)  # type: ignore[call-arg]
    for shown in (repr(settings), str(settings)):
        assert not any(f"pass-{n}" in shown for n in (1, 2, 3)), shown
        assert "postgresql+psycopg://mammo:***@db/mammo" in shown, shown
        assert "redis://:***@redis:6379/0" in shown, shown
    assert settings.database_url.endswith(":db-pass-1@db/mammo")  # the value itself is whole


def test_the_settings_repr_shows_only_the_webhooks_host_since_its_path_is_a_token() -> None:
    # Slack, Teams and Discord put the webhook's credential in the path itself.
    settings = Settings(webhook_url="https://hooks.slack.com/services/T01/B02/s3cr3tT0ken",
                        webhook_secret="hook-secret", _env_file=None)  # type: ignore[call-arg]
    for shown in (repr(settings), str(settings)):
        assert "s3cr3tT0ken" not in shown and "B02" not in shown, shown
        assert "https://hooks.slack.com/***" in shown, shown
    bare = Settings(webhook_url="http://receiver:8080", webhook_secret="s",  # type: ignore[call-arg]
                    _env_file=None)
    assert "'http://receiver:8080'" in repr(bare)
