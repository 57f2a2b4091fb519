"""A manifest row corrects the laterality, view and exam an image was only inferred to have.

A site runs `mammo run folder/` on PNGs with no manifest: each image is read alone, with
the laterality and view its mini-MIAS name gives, or none. Then it runs the folder again
with the manifest that forms its exams. Since de3e2f0 every file was refused as a
``uid_conflict`` (its bytes are an image registered with other metadata), exit 3, and the
message said no command changes a registered image's metadata: the exams could never
form. Values that were only inferred (``images.metadata_origin`` 'filename' or 'none')
now yield to the row: the image takes the row's values, joins the new batch under the
file's path and is scored again, its earlier predictions kept. Stated values (an earlier
manifest row) still make a conflict.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from producer.registration import Registration, create_batch, register_files
from shared.config import Settings
from shared.db import lifecycle
from shared.db.engine import (
    create_db_engine,
    ensure_schema,
    make_session_factory,
    upgrade,
)
from shared.db.schema import (
    Batch,
    DuplicateSubmission,
    ExamResult,
    Image,
    ModelVersion,
    Prediction,
    Study,
)
from shared.enums import ErrorCode, Priority
from tests.helpers.cli import invoke_cli
from tests.helpers.db import stored_images
from tests.helpers.old_schema import downgraded_to, migrated_to
from tests.unit.test_content_identity_conflict import (
    _copies,
    _ingestion,
    _png,
    _settings,
)

CONFLICT = ErrorCode.UID_CONFLICT.value


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(_settings(url))
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _register(sessions: sessionmaker[Session], files: list[Path],
              ingestion: object) -> tuple[int, Registration]:
    batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
    return batch, register_files(sessions, batch, files, ingestion=ingestion)  # type: ignore[arg-type]


def _scored(sessions: sessionmaker[Session], image_id: int) -> int:
    """Mark the image done with a prediction by a model version of its own; its id."""
    with sessions() as session:
        version = ModelVersion(name="old", version="0.9", sha256="ab" * 32,
                               preprocessing_version="1", classes=["normal", "benign",
                                                                   "malignant"],
                               input_size=[64, 64], path="/models/old")
        session.add(version)
        session.flush()
        prediction = Prediction(image_id=image_id, model_version_id=version.id,
                                preprocessing_version="1", label="malignant", p_normal=0.1,
                                p_benign=0.1, p_malignant=0.8, suspicion=8, decode_ms=1.0,
                                preprocess_ms=1.0, infer_ms=1.0, forward_pass_id="fp-1",
                                forward_pass_size=1)
        session.add(prediction)
        session.execute(Image.__table__.update().where(Image.id == image_id)
                        .values(state="done", attempts=1, finished_at=func.now()))
        session.commit()
        return prediction.id


@pytest.mark.parametrize("name, origin, before", [
    ("mdb023.png", "filename", ("R", "MLO")),  # the mini-MIAS name: right, MLO
    ("scan.png", "none", (None, None)),  # nothing said: read alone
])
def test_a_manifest_row_corrects_an_image_whose_metadata_was_inferred(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session], name: str,
        origin: str, before: tuple[str | None, str | None]) -> None:
    alone = _png(tmp_path / name)
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path, None))
    [original] = stored_images(sessions)
    assert (original.laterality, original.view, original.study_id) == (*before, None)
    assert original.metadata_origin == origin
    earlier = _scored(sessions, original.id)

    again = tmp_path / "P1" / name  # a byte-identical copy, now with its manifest row
    again.parent.mkdir()
    shutil.copyfile(alone, again)
    batch, reg = _register(sessions, [again], _ingestion(
        sqlite_url, tmp_path, {f"P1/{name}": "PAT-A,L,MLO,PX1"}))

    [image] = stored_images(sessions)
    with sessions() as session:
        exam = session.execute(select(Study)).scalar_one()
        predictions = list(session.execute(select(Prediction.id)).scalars())
        counts = session.execute(select(Batch.submitted, Batch.duplicates)
                                 .where(Batch.id == batch)).one()
    assert image.id == original.id and reg.new_ids == [image.id]
    assert reg.reregistered == {image.id: reg.reregistered[image.id]}
    assert "laterality" in reg.reregistered[image.id] and "exam" in reg.reregistered[image.id]
    assert (image.laterality, image.view, image.study_id, image.metadata_origin) == (
        "L", "MLO", exam.id, "manifest")
    assert exam.patient_pseudonym is not None and "PAT-A" not in exam.study_uid
    # Registered anew in this batch, under this file's path, to be scored again.
    assert (image.state, image.batch_id, image.source, image.attempts) == (
        "queued", batch, str(again), 0)
    assert image.finished_at is None and image.enqueued_at is None
    assert predictions == [earlier]  # the earlier reading stays, as history
    assert _copies(sessions, batch) == [] and tuple(counts) == (1, 0)
    assert exam.exam_inputs_seq == 1  # its exam owes a refresh

    # The same folder and manifest again: a plain copy of the corrected image.
    batch, reg = _register(sessions, [again], _ingestion(
        sqlite_url, tmp_path, {f"P1/{name}": "PAT-A,L,MLO,PX1"}))
    assert reg.reregistered == {} and _copies(sessions, batch) == [(name, image.id)]


def test_a_row_giving_values_an_image_read_alone_had_none_of_corrects_it(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """Nothing said of scan.png, then a row giving its side and view, no exam: not a copy
    (which kept it with no laterality, so never read against the other breast)."""
    path = _png(tmp_path / "scan.png")
    _register(sessions, [path], _ingestion(sqlite_url, tmp_path, None))
    _, reg = _register(sessions, [path], _ingestion(sqlite_url, tmp_path,
                                                    {"scan.png": ",L,CC,"}))
    [image] = stored_images(sessions)
    assert reg.reregistered == {image.id: "laterality unknown -> L, view unknown -> CC"}
    assert (image.laterality, image.view, image.study_id, image.state) == (
        "L", "CC", None, "queued")
    # A row leaving every value out is a copy.
    batch, reg = _register(sessions, [path], _ingestion(sqlite_url, tmp_path,
                                                        {"scan.png": ",,,"}, "less.csv"))
    assert reg.reregistered == {} and _copies(sessions, batch) == [("scan.png", image.id)]


def test_a_row_contradicting_an_earlier_row_is_still_a_conflict(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """Stated against stated: the image corrected by one manifest row is not corrected
    again by another."""
    alone = _png(tmp_path / "mdb023.png")
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path, None))
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path,
                                            {"mdb023.png": ",L,MLO,PX1"}, "first.csv"))
    [image] = stored_images(sessions)
    assert (image.laterality, image.metadata_origin) == ("L", "manifest")
    batch, reg = _register(sessions, [alone], _ingestion(
        sqlite_url, tmp_path, {"mdb023.png": ",R,MLO,PX1"}, "second.csv"))
    kept, clash = stored_images(sessions)
    assert (kept.id, kept.laterality) == (image.id, "L") and reg.reregistered == {}
    assert (clash.error_code, clash.batch_id) == (CONFLICT, batch)
    message = clash.error_message or ""
    assert "they differ in laterality." in message
    assert f"If image {image.id}'s are the wrong ones, they cannot be changed" in message


def test_two_names_inferring_other_values_are_a_conflict_a_row_then_corrects(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """The same bytes under two mini-MIAS names (right, then left): two guesses, nothing
    stated; the refusal says a manifest row corrects the image, and one does."""
    first = _png(tmp_path / "mdb023.png")
    renamed = tmp_path / "mdb024.png"
    shutil.copyfile(first, renamed)
    _register(sessions, [first], _ingestion(sqlite_url, tmp_path, None))
    _register(sessions, [renamed], _ingestion(sqlite_url, tmp_path, None))
    image, clash = stored_images(sessions)
    assert (image.laterality, clash.error_code) == ("R", CONFLICT)
    assert (f"If image {image.id}'s are the wrong ones: they were only inferred from its file "
            "name, so a manifest row corrects them") in (clash.error_message or "")
    _, reg = _register(sessions, [renamed], _ingestion(sqlite_url, tmp_path,
                                                       {"mdb024.png": ",L,MLO,"}))
    assert list(reg.reregistered) == [image.id]
    assert stored_images(sessions)[0].laterality == "L"


def test_a_copy_in_the_same_submission_corrects_nothing(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """a.png (no row) and its copy b.png (a row) in one submission: the image is this
    submission's own, registered from a.png; b.png is refused, and corrects it when sent
    again on its own."""
    left = _png(tmp_path / "in" / "a.png")
    right = tmp_path / "in" / "b.png"
    shutil.copyfile(left, right)
    ingestion = _ingestion(sqlite_url, tmp_path, {"in/b.png": ",L,CC,EX1"})
    _, reg = _register(sessions, [left, right], ingestion)
    image, clash = stored_images(sessions)
    assert reg.reregistered == {} and (image.laterality, image.study_id) == (None, None)
    assert clash.error_code == CONFLICT
    assert "Submit this file again with its row (--manifest) in a submission of its own" in (
        clash.error_message or "")
    _, reg = _register(sessions, [right], ingestion)
    assert list(reg.reregistered) == [image.id]
    assert Path(stored_images(sessions)[0].source).name == "b.png"


@pytest.mark.parametrize("rows, copied", [
    ((",L,MLO,PX1", ",L,MLO,PX1"), True),  # the second file: a copy of the corrected image
    ((",L,MLO,PX1", ",R,MLO,PX1"), False),  # the second: a conflict with the first's row
])
def test_two_copies_with_rows_correct_the_image_once(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session],
        rows: tuple[str, str], copied: bool) -> None:
    alone = _png(tmp_path / "mdb023.png")
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path, None))
    a, b = tmp_path / "P1" / "a.png", tmp_path / "P1" / "b.png"
    a.parent.mkdir()
    shutil.copyfile(alone, a)
    shutil.copyfile(alone, b)
    batch, reg = _register(sessions, [a, b], _ingestion(
        sqlite_url, tmp_path, {"P1/a.png": rows[0], "P1/b.png": rows[1]}))
    images = stored_images(sessions)
    assert list(reg.reregistered) == [images[0].id]
    assert (Path(images[0].source).name, images[0].laterality) == ("a.png", "L")
    if copied:
        assert len(images) == 1 and _copies(sessions, batch) == [("b.png", images[0].id)]
    else:
        assert (Path(images[1].source).name, images[1].error_code) == ("b.png", CONFLICT)


def test_an_image_a_worker_holds_is_taken_from_it_and_its_result_discarded(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """Corrected while a worker reads it under the earlier values: its claim is cleared,
    so the worker's save (fenced by its claim) writes nothing, and the image waits queued,
    with its new values, for a new claim."""
    alone = _png(tmp_path / "mdb023.png")
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path, None))
    [image] = stored_images(sessions)
    with sessions() as session:
        [claimed] = lifecycle.claim(session, [image.id], token="worker-1", lease_s=600)
    assert claimed.laterality == "R"
    _, reg = _register(sessions, [alone], _ingestion(sqlite_url, tmp_path,
                                                     {"mdb023.png": ",L,MLO,PX1"}))
    assert list(reg.reregistered) == [image.id]
    with sessions() as session:
        assert lifecycle.mark_done(session, [image.id], token="worker-1") == []
        assert not lifecycle.mark_failed(session, image.id, ErrorCode.POISON, "x",
                                         token="worker-1")
        session.commit()
        [again] = lifecycle.claim(session, [image.id], token="worker-2", lease_s=600)
    assert (again.laterality, again.attempts) == ("L", 1)


def test_mammo_run_forms_the_exam_its_manifest_gives_images_read_alone_before(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mammo run folder/` with no manifest (each image read alone: mdb023 right by its
    name, the others with nothing), then the folder again with its manifest: one 4-view
    exam, complete, each image scored again under its row's values."""
    folder = tmp_path / "P1"
    views = {"mdb023.png": "L,MLO", "lcc.png": "L,CC", "rcc.png": "R,CC", "rmlo.png": "R,MLO"}
    for seed, name in enumerate(views):
        _png(folder / name, seed=20 + seed)
    (folder / "manifest.csv").write_text("path,laterality,view,study_id\n" + "".join(
        f"{name},{values},PX1\n" for name, values in views.items()))
    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"database_url": url, "model": str(tiny_model_dir),
           "report_dir": str(tmp_path / "reports")}

    code, out = invoke_cli(["run", str(folder)], monkeypatch, tmp_path, **env)
    assert code == 0, out
    sessions = make_session_factory(create_db_engine(_settings(url)))
    first = {Path(i.source).name: i for i in stored_images(sessions)}
    assert {n: (i.laterality, i.study_id, i.state) for n, i in first.items()} == {
        "mdb023.png": ("R", None, "done"), "lcc.png": (None, None, "done"),
        "rcc.png": (None, None, "done"), "rmlo.png": (None, None, "done")}
    with sessions() as session:
        scored_at = dict(session.execute(
            select(Prediction.image_id, Prediction.created_at)).all())

    code, out = invoke_cli(["run", str(folder), "--manifest", str(folder / "manifest.csv")],
                           monkeypatch, tmp_path, **env)
    assert code == 0, out
    assert ("4 file(s): 0 new, 4 re-registered with their manifest rows and scored again, 0 "
            "already submitted, 0 rejected at intake") in " ".join(out.split()), out
    images = {Path(i.source).name: i for i in stored_images(sessions)}
    with sessions() as session:
        exam = session.execute(select(Study)).scalar_one()
        result = session.execute(select(ExamResult).where(
            ExamResult.superseded_at.is_(None))).scalar_one()
        predictions = session.execute(select(Prediction.image_id, Prediction.created_at)).all()
    assert {i.id for i in images.values()} == {i.id for i in first.values()}
    assert {n: f"{i.laterality},{i.view}" for n, i in images.items()} == views
    assert all((i.study_id, i.state, i.metadata_origin) == (exam.id, "done", "manifest")
               for i in images.values())
    assert (result.status, result.n_images, sorted(result.views)) == (
        "complete", 4, ["L-CC", "L-MLO", "R-CC", "R-MLO"])
    # Scored again after the correction: one model version here, whose new reading of each
    # image replaces its own earlier one (one prediction per image per model version).
    assert len(predictions) == 4
    assert all(at > scored_at[image_id] for image_id, at in predictions)
    assert not _copies(sessions, images["lcc.png"].batch_id)

    # The same folder and manifest again: copies of what they now are.
    code, out = invoke_cli(["run", str(folder), "--manifest", str(folder / "manifest.csv")],
                           monkeypatch, tmp_path, **env)
    assert code == 0 and "0 new, 4 already submitted, 0 rejected" in " ".join(out.split())
    # And a manifest contradicting the rows now stated: refused, as before.
    (folder / "other.csv").write_text("path,laterality,view,study_id\nrcc.png,L,CC,PX1\n")
    code, out = invoke_cli(["run", str(folder / "rcc.png"), "--manifest",
                            str(folder / "other.csv")], monkeypatch, tmp_path, **env)
    assert code == 3 and "0 already submitted, 1 rejected at intake" in " ".join(out.split())
    assert stored_images(sessions)[-1].error_code == CONFLICT


# The heads before images.metadata_origin.
EARLIER_HEADS = ("0010", "0012", "0013", "0014", "0015")
ROWS = (
    "INSERT INTO batches (id, name, priority, mode, submitted, duplicates) "
    "VALUES (1, 'night', 'routine', 'embedded', 8, 0)",
    "INSERT INTO studies (id, study_uid, exam_inputs_seq, exam_result_seq) "
    "VALUES (1, 'manifest:PX1', 0, 0)",
)
# id, source, format, laterality, view, study, label, spacing; what the upgrade marks.
IMAGES = (
    (1, "/in/mdb023.png", "png", "R", "MLO", None, None, 0.2, "filename"),
    (2, "/in/scan.png", "png", None, None, None, None, None, "none"),
    (3, "/in/mdb024.png", "png", "L", "MLO", 1, None, 0.2, None),  # in an exam: a row's
    (4, "/in/mdb025.png", "png", "L", "MLO", None, None, 0.2, None),  # not its name's side
    (5, "/in/mdb026.PGM", "pgm", "L", "MLO", None, "normal", 0.2, None),  # a row's label
    (6, "/in/mdb027.pgm", "pgm", "R", "MLO", None, None, 0.2, "filename"),
    (7, "/in/x.dcm", "dicom", None, None, None, None, None, None),
    (8, "/in/broken.png", "unknown", None, None, None, None, None, None),
    (9, "/in/spaced.png", "png", None, None, None, None, 0.1, None),  # a row's spacing
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_marks_inferred_only_what_stored_values_show(
        backend: str, request: pytest.FixtureRequest, sqlite_url: str) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    images = [
        "INSERT INTO images (id, identity, batch_id, source, format, laterality, view, "
        "study_id, reference_label, spacing_row_mm, spacing_column_mm, state, attempts) "
        f"VALUES ({i}, 'sha256:{i:02d}', 1, '{src}', '{fmt}', "
        + ", ".join("NULL" if v is None else (f"'{v}'" if isinstance(v, str) else str(v))
                    for v in (lat, view, study, label, spacing, spacing))
        + ", 'done', 1)"
        for i, src, fmt, lat, view, study, label, spacing, _ in IMAGES]
    migrated_to(url, EARLIER_HEADS, *ROWS, *images)
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    upgrade(engine)
    with engine.connect() as conn:
        marked = dict(conn.execute(text("SELECT id, metadata_origin FROM images")).all())
    engine.dispose()
    assert marked == {i: origin for i, *_, origin in IMAGES}

    downgraded_to(url, "0016-1")
    plain = create_engine(url)
    with plain.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("images")}
        assert conn.execute(text("SELECT count(*) FROM images")).scalar() == len(IMAGES)
    plain.dispose()
    assert "metadata_origin" not in columns and "pixel_fingerprint" in columns


def test_an_image_left_stated_by_the_upgrade_is_not_corrected(
        tmp_path: Path, sqlite_url: str, sessions: sessionmaker[Session]) -> None:
    """Registered before origins were kept (NULL): taken as stated, a conflict as before."""
    alone = _png(tmp_path / "mdb023.png")
    _register(sessions, [alone], _ingestion(sqlite_url, tmp_path, None))
    with sessions() as session:
        session.execute(Image.__table__.update().values(metadata_origin=None))
        session.commit()
    _, reg = _register(sessions, [alone], _ingestion(sqlite_url, tmp_path,
                                                     {"mdb023.png": ",L,MLO,PX1"}))
    image, clash = stored_images(sessions)
    assert reg.reregistered == {} and image.laterality == "R"
    assert clash.error_code == CONFLICT
    with sessions() as session:
        assert session.execute(select(func.count()).select_from(DuplicateSubmission)).scalar() == 0


def test_mammo_submit_re_registers_and_sends_what_its_manifest_corrects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """The distributed path registers alike: the corrected images are queued, sent, and
    counted apart (``reregistered`` of ``queued``)."""
    folder = tmp_path / "in"
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        _png(folder / name, seed=40 + seed)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"broker_url": redis_url, "database_url": url}
    code, out = invoke_cli(["submit", str(folder), "--json"], monkeypatch, tmp_path, **env)
    assert code == 0 and json.loads(out[out.index("{"):])["queued"] == 3, out

    (folder / "m.csv").write_text("path,laterality,view,study_id\n"
                                  "a.png,L,CC,EX1\nb.png,R,CC,EX1\n")
    code, out = invoke_cli(["submit", str(folder / "a.png"), str(folder / "b.png"),
                            str(folder / "c.png"), "--manifest", str(folder / "m.csv"),
                            "--json"], monkeypatch, tmp_path, **env)
    summary = json.loads(out[out.index("{"):])
    assert code == 0, out
    assert (summary["queued"], summary["reregistered"], summary["duplicates"]) == (2, 2, 1)
    sessions = make_session_factory(create_db_engine(_settings(url)))
    images = {Path(i.source).name: i for i in stored_images(sessions)}
    assert {n: (i.laterality, i.state, i.enqueued_at is not None) for n, i in images.items()
            if n != "c.png"} == {"a.png": ("L", "queued", True), "b.png": ("R", "queued", True)}

    (folder / "c.csv").write_text("path,laterality,view\nc.png,L,MLO\n")
    code, out = invoke_cli(["submit", str(folder / "c.png"), "--manifest",
                            str(folder / "c.csv")], monkeypatch, tmp_path, **env)
    assert code == 0, out
    assert ("1 queued in 1 tasks (1 of them re-registered with its manifest row, to be "
            "scored again), 0 duplicates skipped") in " ".join(out.split()), out
