"""Messages that are logged and stored name no header value: a reused SOP Instance UID's
exam, a manifest value refused after a row lost a value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.datasets import load_dataset
from producer.manifest import Manifest
from producer.registration import create_batch, ingestion_for, register_files
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from shared.db.schema import Image
from shared.enums import Laterality, Priority, View
from shared.errors import DatasetError, ManifestError
from shared.pseudonym import Pseudonymizer
from shared.synthetic import synth_mammogram, write_dicom
from tests.helpers.dicom_edit import rewrite_dicom

KEY = "0123456789abcdef-phi-key"
ACCESSION = "ACC-PHI-4455"
STUDY_DATE = "19990317"
SOP = "1.2.826.0.1.3680043.8.498.4401"
STUDY_UID = "1.2.826.0.1.3680043.8.498.4400"


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url, broker_url=None, _env_file=None,  # type: ignore[call-arg]
                    patient_id_key=SecretStr(KEY))


@pytest.fixture
def sessions(settings: Settings) -> sessionmaker[Session]:
    engine = create_db_engine(settings)
    ensure_schema(engine)
    return make_session_factory(engine)


def _dicom(folder: Path, *, keyed_by: str | None) -> Path:
    """The same image (one SOP Instance UID) of an exam named by its StudyInstanceUID, or,
    with ``keyed_by``, of one whose header has no StudyInstanceUID: keyed by its accession
    number, or by its patient and study date."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = synth_mammogram(np.random.default_rng(2), size=(96, 80))
    path = write_dicom(folder / "scan.dcm", pixels, study_uid=STUDY_UID, sop_uid=SOP,
                       laterality=Laterality.LEFT, view=View.CC, patient_id="PAT-4455",
                       accession=ACCESSION)
    if keyed_by is not None:
        rewrite_dicom(path, StudyInstanceUID=None, StudyDate=STUDY_DATE,
                      AccessionNumber=ACCESSION if keyed_by == "accession" else None)
    return path


@pytest.mark.parametrize("keyed_by, described", [
    ("accession", "an exam without a StudyInstanceUID, keyed by its accession number"),
    ("date", "an exam without a StudyInstanceUID, keyed by its patient and study date"),
])
@pytest.mark.parametrize("keyed_first", [True, False])
def test_a_reused_sop_uid_names_an_exam_keyed_by_a_header_value_without_the_value(
        tmp_path: Path, settings: Settings, sessions: sessionmaker[Session], keyed_by: str,
        described: str, keyed_first: bool) -> None:
    # "they differ in exam (image 20's 1.2.826...; this file's accession::ACC-PHI-4455)",
    # logged by `mammo watch` and stored as the failure's message.
    keyed = _dicom(tmp_path / "a", keyed_by=keyed_by)
    named = _dicom(tmp_path / "b", keyed_by=None)
    ingestion = ingestion_for(settings)
    for path in (keyed, named) if keyed_first else (named, keyed):
        batch = create_batch(sessions, name="t", priority=Priority.ROUTINE, mode="test")
        register_files(sessions, batch, [path], ingestion=ingestion)
    with sessions() as session:
        first, clash = session.execute(select(Image).order_by(Image.id)).scalars().all()
    assert (clash.state, clash.error_code) == ("failed", "uid_conflict")
    message = clash.error_message or ""
    theirs, ours = (described, STUDY_UID) if keyed_first else (STUDY_UID, described)
    assert f"they differ in exam (image {first.id}'s {theirs}; this file's {ours})" in message
    assert ACCESSION not in message and STUDY_DATE not in message
    assert Pseudonymizer(KEY.encode())("PAT-4455") not in message  # the keys hold it too


def _refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        Manifest.load(path, pseudonymize=None)
    return str(caught.value)


@pytest.mark.parametrize("column", ["laterality", "view", "label", "pixel_spacing_mm",
                                    "study_date"])
def test_a_value_in_the_wrong_column_is_quoted_by_its_start_and_length(
        tmp_path: Path, column: str) -> None:
    # The row lacks its laterality: the patient's ID lands in the next column, and the
    # message quoted it whole ("line 2: 'PHI-ID-778899' is not a valid laterality").
    message = _refusal(tmp_path, f"path,{column},accession\nx.png,PHI-ID-778899\n")
    assert "PHI-ID-778899" not in message and "778899" not in message
    assert f"line 2: 'PHI...' (13 characters, shown in part) is not a valid {column} " \
        "(accepted: " in message
    assert "values after it are in the wrong columns" in message


def test_a_short_refused_value_is_quoted_whole(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "path,laterality\nx.png,X\n")
    assert "line 2: 'X' is not a valid laterality (accepted: L, R or B" in message
    assert "wrong columns" not in message


@pytest.mark.parametrize("first_row", ["x.png,PHI-ID-778899,L", "x.png;PHI-ID-778899;L",
                                       "x.png,Zzyzx Quintessa,malignant"])
def test_a_manifest_without_a_header_row_is_refused_without_its_first_rows_values(
        tmp_path: Path, first_row: str) -> None:
    # The first data row was quoted as "columns found: x.png, phi-id-778899, l", by
    # `mammo submit --manifest` and by `mammo train`/`evaluate` alike.
    manifest = tmp_path / "m.csv"
    second = "y.png,PHI-ID-112233,R".replace(",", ";" if ";" in first_row else ",")
    manifest.write_text(f"{first_row}\n{second}\n", encoding="utf-8")
    with pytest.raises(ManifestError) as refused:
        Manifest.load(manifest, pseudonymize=None)
    message = str(refused.value)
    assert "no header row" in message and "expected path, patient_id" in message, message
    assert "phi-id" not in message.lower() and "zzyzx" not in message.lower(), message
    with pytest.raises(DatasetError) as refused_too:
        load_dataset(manifest)
    assert "no header row" in str(refused_too.value), refused_too.value
    assert "phi-id" not in str(refused_too.value).lower(), refused_too.value


def test_a_semicolon_header_is_still_named_with_its_hint(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path;patient_id\nx.png;PHI-ID-778899\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"columns found: path;patient_id.*separated by ';'"):
        Manifest.load(manifest, pseudonymize=None)
