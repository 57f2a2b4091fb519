"""A PostgreSQL database that is not UTF8, and a client whose default encoding is not UTF-8.

Probe: on a LATIN1 database `mammo submit` of an exam with Japanese text (ISO 2022 IR 87)
exited 1 with a traceback (``UnicodeEncodeError: 'latin-1' codec ...`` from the upsert)
half-way through registering it, and `mammo watch` did the same at each restart; on a
SQL_ASCII database every command ended with ``TypeError: cannot use a string pattern on a
bytes-like object`` (psycopg returned text as bytes). Every command now checks the
database's encoding where it checks the URL, and refuses one that is not UTF8 in one line
(exit 4) before it migrates or stores anything; the worker refuses at start. Connections
talk UTF-8 whatever the environment asks (``PGCLIENTENCODING``), so a UTF8 database
stores every script.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from producer.cli.exit_codes import ExitCode
from shared.synthetic import EXAM_VIEWS, synth_mammogram, write_dicom
from tests.conftest import PG_HOST, PG_PORT, require_service
from tests.helpers.dicom_edit import rewrite_dicom
from tests.helpers.processes import mammo_env, run_mammo

pytestmark = pytest.mark.integration

ADMIN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
ACCESSION = "ACC-山田-Ζωή"  # Japanese and Greek: neither fits LATIN1
KEY = "fix-pgenc-" + "k" * 32


@pytest.fixture
def database_in() -> Iterator[Callable[[str], str]]:
    """``database_in(ENCODING)``: the URL of a fresh database in that encoding (from
    template0, C locale, which any encoding accepts); all dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    names: list[str] = []

    def create(encoding: str) -> str:
        name = f"mammo_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' TEMPLATE template0 "
                         "LC_COLLATE 'C' LC_CTYPE 'C'")
        names.append(name)
        return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"

    yield create
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _exam(folder: Path) -> Path:
    """One four-view exam whose accession number is in Japanese and Greek (ISO_IR 192)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    study = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**20}"
    for number, (laterality, view) in enumerate(EXAM_VIEWS, 1):
        path = write_dicom(folder / f"{laterality.value}{view.value}.dcm",
                           synth_mammogram(rng, laterality=laterality),
                           study_uid=study, sop_uid=f"{study}.{number}",
                           laterality=laterality, view=view,
                           patient_id="P-0001")
        rewrite_dicom(path, SpecificCharacterSet="ISO_IR 192", AccessionNumber=ACCESSION,
                      PatientName="山田^太郎")
    return folder


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_every_command_refuses_a_database_that_is_not_utf8(
        encoding: str, database_in: Callable[[str], str], redis_url: str,
        tmp_path: Path) -> None:
    url = database_in(encoding)
    exam = _exam(tmp_path / "in")
    env = mammo_env(database_url=url, broker_url=redis_url, patient_id_key=KEY)
    for args in (["submit", str(exam)], ["status"], ["watch", str(exam), "--poll"],
                 ["worker", "--wait-for-servers", "0"]):
        done = run_mammo(args, env, tmp_path, timeout=120)
        assert done.returncode == ExitCode.CONFIG, (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert (f"The PostgreSQL database at postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/"
                f"{_database(url)} uses encoding {encoding}; mammo stores patient names and "
                "accession numbers in any script and needs a UTF8 database: create one with "
                "`createdb -E UTF8 -T template0 NAME`") in done.stderr, (args, done.stderr)
    # Refused before migrating: no table made, nothing stored, nothing left to clean up.
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres "
                         f"dbname={_database(url)}") as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)
    assert exam.is_dir() and len(list(exam.iterdir())) == 4  # the watcher moved nothing


def test_a_utf8_database_stores_every_script_whatever_the_client_encoding(
        database_in: Callable[[str], str], redis_url: str, tmp_path: Path) -> None:
    """PGCLIENTENCODING=LATIN1 (a server's or a shell's default) made psycopg encode text
    as Latin-1: the Japanese accession number failed with UnicodeEncodeError."""
    url = database_in("UTF8")
    env = mammo_env(database_url=url, broker_url=redis_url, patient_id_key=KEY)
    env["PGCLIENTENCODING"] = "LATIN1"
    done = run_mammo(["submit", str(_exam(tmp_path / "in"))], env, tmp_path, timeout=120)
    assert done.returncode == ExitCode.OK, done.stderr
    assert "4 queued" in done.stderr, done.stderr
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres "
                         f"dbname={_database(url)} client_encoding=UTF8") as conn:
        stored = conn.execute("SELECT DISTINCT accession_number FROM studies").fetchall()
    assert stored == [(ACCESSION,)]
    done = run_mammo(["status"], env, tmp_path, timeout=120)
    assert done.returncode == ExitCode.OK, done.stderr
