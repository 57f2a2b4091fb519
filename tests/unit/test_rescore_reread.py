"""`mammo rescore --reread`: the done images an earlier release's readers read are scored
again, the current model's own predictions included.

Upgrade probe (s6): a release fixed how some files are read (DICOM High Bit, PNG/TIFF
alpha, laterality from View Position); images the earlier release read wrongly kept their
wrong scores, and `mammo rescore --batch N` found 0 images, as the current model had scored
them. Each prediction now records its reader version (NULL: an earlier release's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text, update

from models.registry import resolve_model
from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, head_revisions, upgrade
from shared.db.schema import Image, Prediction
from shared.imaging.reader_version import READER_VERSION
from shared.synthetic import make_exam_set
from tests.helpers.cli import Mammo, mammo_on
from tests.helpers.old_schema import downgraded_to, migrated_to

KEY = "rescore-reread-key-0123456789abcd"


def _predictions(url: str) -> list[tuple[int, int, int, str | None]]:
    """(image id, prediction id, model version id, reader version), by image."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Prediction.image_id, Prediction.id,
                                       Prediction.model_version_id, Prediction.reader_version)
                                .order_by(Prediction.image_id, Prediction.id)).all()
    finally:
        engine.dispose()
    return [(int(i), int(p), int(m), r) for i, p, m, r in rows]


def _as_an_earlier_release_left(url: str, image_ids: list[int]) -> None:
    """Their predictions as the earlier release wrote them: no reader version."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Prediction).where(Prediction.image_id.in_(image_ids))
                     .values(reader_version=None))
    engine.dispose()


def _scored_then_aged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path,
                      ) -> tuple[str, Mammo]:
    """Four images run through the embedded worker; images 1 and 2 then as the earlier
    release left them."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_exam_set(tmp_path / "in", n_exams=1, seed=71)
    mammo = mammo_on(monkeypatch, tmp_path, database_url=url, model=str(model_dir),
                     patient_id_key=KEY, report_dir=str(tmp_path / "reports"))
    code, out = mammo("run", str(tmp_path / "in"))
    assert code == ExitCode.OK, out
    fresh = _predictions(url)
    assert len(fresh) == 4 and {r for *_, r in fresh} == {READER_VERSION}
    _as_an_earlier_release_left(url, [1, 2])
    return url, mammo


def test_reread_rescores_what_an_earlier_release_read_and_replaces_its_prediction(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, mammo = _scored_then_aged(tmp_path, monkeypatch, tiny_model_dir)
    before = _predictions(url)
    spec = resolve_model(str(tiny_model_dir))

    code, out = mammo("rescore", "--batch", "1", "--dry-run")  # the default is unchanged
    assert code == ExitCode.OK and "0 done image(s) not scored by" in out, out
    code, out = mammo("rescore", "--reread", "--batch", "1", "--dry-run")
    assert code == ExitCode.OK, out
    assert (f"2 done image(s) not scored by {spec.name} {spec.version} with this release's "
            f"readers (reader version {READER_VERSION}) (dry run)") in out, out
    assert _predictions(url) == before

    code, out = mammo("rescore", "--reread", "--batch", "1")
    assert code == ExitCode.OK and "processed 2 re-scored image(s)" in out, out
    after = _predictions(url)
    # One prediction per image per model version: the re-read one replaced the old one,
    # with a newer id (the current prediction is the newest); the others are untouched.
    assert [(i, m) for i, _, m, _ in after] == [(i, m) for i, _, m, _ in before]
    assert {r for *_, r in after} == {READER_VERSION}
    newest = max(p for _, p, _, _ in before)
    assert all(p > newest for i, p, _, _ in after if i in (1, 2))
    assert [row for row in after if row[0] in (3, 4)] == [row for row in before
                                                          if row[0] in (3, 4)]
    code, out = mammo("results", "--batch", "1", "--format", "json")
    assert code == ExitCode.OK, out
    assert sorted(r["image_id"] for r in json.loads(out) if r["label"]) == [1, 2, 3, 4]

    for args in (("rescore", "--batch", "1"), ("rescore", "--reread", "--batch", "1")):
        code, out = mammo(*args)  # nothing left to do either way
        assert code == ExitCode.OK and "0 done image(s)" in out, out
    assert _predictions(url) == after


def test_reread_keeps_the_earlier_result_of_a_file_it_cannot_read_again(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    url, mammo = _scored_then_aged(tmp_path, monkeypatch, tiny_model_dir)
    before = _predictions(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        gone = Path(conn.execute(select(Image.source).where(Image.id == 1)).scalar_one())
    engine.dispose()
    gone.unlink()

    with caplog.at_level(logging.WARNING, logger="worker.pipeline"):
        code, out = mammo("rescore", "--reread", "--batch", "1")
    assert code == ExitCode.IMAGES_FAILED, out
    assert "processed 1 re-scored image(s)" in out, out
    assert "1 could not be scored again and keeps its earlier result" in out, out
    after = _predictions(url)
    assert after[0] == before[0]  # image 1: its earlier result, still to be read again
    assert after[1][0] == 2 and after[1][3] == READER_VERSION and after[1][1] > before[-1][1]
    code, out = mammo("rescore", "--reread", "--batch", "1", "--dry-run")
    assert code == ExitCode.OK and "1 done image(s) not scored by" in out, out
    code, out = mammo("results", "--batch", "1", "--format", "json")
    assert code == ExitCode.OK, out
    assert {r["image_id"]: r["state"] for r in json.loads(out)} == {
        1: "done", 2: "done", 3: "done", 4: "done"}


def test_reread_also_finds_what_another_model_scored(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default's images (another model version's) stay among --reread's."""
    url, mammo = _scored_then_aged(tmp_path, monkeypatch, tiny_model_dir)
    engine = create_engine(url)
    with engine.begin() as conn:  # image 4 scored last by another registered version
        conn.execute(text(
            "INSERT INTO model_versions (name, version, sha256, preprocessing_version, "
            "classes, input_size, path, active) SELECT name, '9.9.9', sha256, "
            "preprocessing_version, classes, input_size, path, 0 FROM model_versions"))
        conn.execute(text(
            "UPDATE predictions SET model_version_id = (SELECT max(id) FROM model_versions) "
            "WHERE image_id = 4"))
    engine.dispose()
    code, out = mammo("rescore", "--batch", "1", "--dry-run")
    assert code == ExitCode.OK and "1 done image(s) not scored by" in out, out
    code, out = mammo("rescore", "--reread", "--batch", "1", "--dry-run")
    assert code == ExitCode.OK and "3 done image(s) not scored by" in out, out


# The heads of the release before predictions.reader_version, and of this tree before it.
EARLIER_HEADS = (("0009", "0010", "0011", "0012", "0013"),
                 ("0009", "0010", "0012", "0013", "0014"))
ROWS = (
    "INSERT INTO batches (id, name, priority, mode, submitted, duplicates) "
    "VALUES (1, 'night', 'normal', 'dicom', 1, 0)",
    "INSERT INTO model_versions (id, name, version, sha256, preprocessing_version, classes, "
    "input_size, path) VALUES (1, 'default', '1.0.0', 'ab12', '2', "
    "'[\"normal\", \"benign\", \"malignant\"]', '[224, 224]', '/models/default/1.0.0')",
    "INSERT INTO images (id, identity, batch_id, source, format, state, attempts) "
    "VALUES (1, 'sha256:01', 1, '/in/a.dcm', 'dicom', 'done', 1)",
    "INSERT INTO predictions (id, image_id, model_version_id, preprocessing_version, label, "
    "p_normal, p_benign, p_malignant, suspicion, decode_ms, preprocess_ms, infer_ms, "
    "forward_pass_id, forward_pass_size) VALUES (1, 1, 1, '2', 'normal', 0.8, 0.1, 0.1, "
    "1, 1.0, 2.0, 3.0, 'fp-1', 16)",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("heads", EARLIER_HEADS, ids="+".join)
def test_an_earlier_schema_upgrades_with_its_predictions_unread_and_downgrades(
        backend: str, heads: tuple[str, ...], request: pytest.FixtureRequest,
        sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    migrated_to(url, heads, *ROWS)
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    before, after = upgrade(engine)
    assert before == "+".join(heads)
    assert after is not None and set(after.split("+")) == head_revisions(engine)
    # 0015 applied, below 0017 (the label rule applied to stored predictions, merged with
    # 0010).
    assert "0017" in head_revisions(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, reader_version FROM predictions")).all() == [
            (1, None)]
    engine.dispose()

    downgraded_to(url, "0015-1")
    plain = create_engine(url)
    with plain.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("predictions")}
        left = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        assert conn.execute(text("SELECT id, label FROM predictions")).all() == [(1, "normal")]
    plain.dispose()
    assert "reader_version" not in columns and "input_notes" in columns
    assert left == (head_revisions(create_db_engine(Settings(  # type: ignore[call-arg]
        database_url=url, _env_file=None))) - {"0017"}) | {"0009", "0010"}
