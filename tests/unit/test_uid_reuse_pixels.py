"""A SOP Instance UID reused on other pixels is a clash, not a copy; copies stay copies.

A re-take of a view sent under the first exposure's UID has the same size, side, view, exam
and patient: its header cannot tell it from a copy, and taken for one it was never scored and
showed the first image's result. Its pixel fingerprint (``shared.imaging.pixel_fingerprint``)
tells it apart; a copy, a copy whose header a router edited, and one a PACS re-compressed
keep being copies. On SQLite and PostgreSQL, and through `mammo run`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydantic import SecretStr
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from producer.cli.exit_codes import ExitCode
from producer.registration import Ingestion, ingestion_for
from shared.config import Settings
from shared.db.schema import DuplicateSubmission, Image
from shared.enums import ErrorCode, Laterality, View
from shared.imaging import pixel_fingerprint as fingerprints
from shared.imaging.pixel_fingerprint import comparable, pixel_fingerprint, pixels_differ
from shared.synthetic import synth_mammogram, write_dicom, write_png
from tests.helpers.cli import run_cli
from tests.helpers.db import registered_batch, stored_images

KEY = "0123456789abcdef-test-key"
PATIENT = "PAT-UID-REUSE-314"
STUDY = "1.2.826.0.1.3680043.8.498.3140"
SOP = "1.2.826.0.1.3680043.8.498.3141"
SIZE = (600, 480)  # 576,000 bytes of pixel data: sampled, not hashed whole


def _pixels(seed: int = 1) -> np.ndarray:
    return synth_mammogram(np.random.default_rng(seed), size=SIZE)


def _view(path: Path, pixels: np.ndarray, sop: str = SOP) -> Path:
    """A right MLO of PATIENT's exam STUDY under ``sop``: all that a header says alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, pixels, study_uid=STUDY, sop_uid=sop,
                       laterality=Laterality.RIGHT, view=View.MLO, patient_id=PATIENT)


def _retake(path: Path) -> Path:
    """Another exposure of the same view: the first image turned 180 degrees."""
    return _view(path, np.ascontiguousarray(np.rot90(_pixels(), 2)))


def _routed(source: Path, target: Path, *, preview: int = 4096) -> Path:
    """``source`` as a router forwards it: private tags and an institution added to the
    header (the pixel data moves in the file, its bytes unchanged), with a private preview
    of ``preview`` bytes in a sequence of undefined length."""
    ds = pydicom.dcmread(source)
    ds.InstitutionName = "Routed Screening Centre"
    block = ds.private_block(0x0009, "MAMMO ROUTER", create=True)
    block.add_new(0x01, "LO", "forwarded by the night router")
    item = Dataset()
    item.private_block(0x0011, "MAMMO ROUTER", create=True).add_new(0x01, "OB",
                                                                     b"\x01" * preview)
    block.add_new(0x02, "SQ", Sequence([item]))
    block[0x02].is_undefined_length = item.is_undefined_length_sequence_item = True
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def _recompressed(source: Path, target: Path, *, padding: bool = False) -> Path:
    """``source`` re-encoded by a PACS (RLE Lossless: encapsulated pixel data), with a
    trailing padding element after the pixel data when ``padding``."""
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)  # its UID
    if padding:
        ds.add(DataElement(0xFFFCFFFC, "OB", b"\0" * 256))
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def _cut(source: Path, target: Path, keep: float) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])
    return target


# --- the fingerprint --------------------------------------------------------------------


def test_the_fingerprint_follows_the_pixels_not_the_header(tmp_path: Path) -> None:
    first = _view(tmp_path / "first.dcm", _pixels())
    copy = tmp_path / "copy.dcm"
    shutil.copy(first, copy)
    routed = _routed(first, tmp_path / "routed.dcm")
    # A header past the first bytes parsed in memory: read from the file instead.
    long = _routed(first, tmp_path / "long.dcm", preview=fingerprints.HEAD + 1000)
    retake = _retake(tmp_path / "retake.dcm")
    other = _view(tmp_path / "other.dcm", _pixels(seed=2))
    printed = {path.name: pixel_fingerprint(path) for path in (first, copy, routed, long,
                                                                retake, other)}
    assert all(printed.values()), printed
    assert printed["copy.dcm"] == printed["routed.dcm"] == printed["first.dcm"]
    assert printed["long.dcm"] == printed["first.dcm"]
    assert pydicom.dcmread(long)[0x00091002].is_undefined_length
    # A raw dataset (no preamble, no file meta), as older PACS export: read as it is coded.
    raw = Dataset()
    raw.update(pydicom.dcmread(first))
    raw.save_as(tmp_path / "raw.dcm", implicit_vr=False, little_endian=True)
    assert pixel_fingerprint(tmp_path / "raw.dcm") == printed["first.dcm"]
    assert routed.stat().st_size > first.stat().st_size  # the pixels did move in the file
    assert printed["first.dcm"] is not None
    syntax, length = printed["first.dcm"].split("/")[1:3]
    assert (syntax, int(length)) == ("1.2.840.10008.1.2.1", SIZE[0] * SIZE[1] * 2)
    for changed in ("retake.dcm", "other.dcm"):
        assert pixels_differ(printed["first.dcm"], printed[changed])
    assert not pixels_differ(printed["first.dcm"], printed["routed.dcm"])


def test_encapsulated_pixel_data_is_fingerprinted_up_to_its_delimiter(tmp_path: Path) -> None:
    first = _view(tmp_path / "first.dcm", _pixels())
    rle = _recompressed(first, tmp_path / "rle.dcm")
    padded = _recompressed(first, tmp_path / "padded.dcm", padding=True)
    retake = _recompressed(_retake(tmp_path / "retake.dcm"), tmp_path / "retake-rle.dcm")
    native, compressed = pixel_fingerprint(first), pixel_fingerprint(rle)
    assert compressed is not None and compressed.split("/")[1] == RLELossless
    # The length is the encapsulated value's: the items, not the elements after them.
    assert int(compressed.split("/")[2]) == len(pydicom.dcmread(rle).PixelData)
    assert pixel_fingerprint(padded) == compressed
    # Re-encoded pixels are other bytes of the same image: not compared at all.
    assert not comparable(native, compressed) and not pixels_differ(native, compressed)
    assert pixels_differ(compressed, pixel_fingerprint(retake))


def test_no_fingerprint_where_the_pixels_cannot_be_sampled(tmp_path: Path) -> None:
    first = _view(tmp_path / "first.dcm", _pixels())
    # Still being written: the value runs past the end of the file, or its items do.
    assert pixel_fingerprint(_cut(first, tmp_path / "half.dcm", 0.6)) is None
    rle = _recompressed(first, tmp_path / "rle.dcm")
    assert pixel_fingerprint(_cut(rle, tmp_path / "half-rle.dcm", 0.6)) is None
    # Deflated: the pixels lie inside the deflate stream, read only by inflating it.
    ds = pydicom.dcmread(first)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert pixel_fingerprint(tmp_path / "deflated.dcm") is None
    # No pixel data, not a DICOM, nothing there.
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "bare.dcm")
    assert pixel_fingerprint(tmp_path / "bare.dcm") is None
    assert pixel_fingerprint(write_png(tmp_path / "a.png", _pixels())) is None
    assert pixel_fingerprint(tmp_path / "gone.dcm") is None
    assert not pixels_differ(None, pixel_fingerprint(first))


class _CountingFile(io.FileIO):
    """A file that counts the bytes read from the disk, by read() and by os.pread."""

    read_bytes = 0

    def readinto(self, buffer: Any) -> int | None:
        count = super().readinto(buffer)
        _CountingFile.read_bytes += count or 0
        return count

    @staticmethod
    def pread(descriptor: int, size: int, offset: int) -> bytes:
        data = _PREAD(descriptor, size, offset)
        _CountingFile.read_bytes += len(data)
        return data


_PREAD = os.pread


def test_the_fingerprint_reads_a_few_chunks_not_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The producer reads headers only: nightly batches are thousands of 20-50 MB files.
    big = write_dicom(tmp_path / "big.dcm", synth_mammogram(np.random.default_rng(3),
                                                            size=(3000, 2400)),
                      study_uid=STUDY, sop_uid=SOP, laterality=Laterality.LEFT, view=View.CC)
    monkeypatch.setattr(fingerprints, "open",
                        lambda path, mode: io.BufferedReader(_CountingFile(path)),
                        raising=False)
    monkeypatch.setattr(os, "pread", _CountingFile.pread)
    _CountingFile.read_bytes = 0
    assert pixel_fingerprint(big) is not None
    assert big.stat().st_size > 14_000_000
    # The first 64 KiB (the header), then 16 chunks of 4 KiB.
    assert _CountingFile.read_bytes == fingerprints.HEAD + 16 * fingerprints.CHUNK


# --- registration -----------------------------------------------------------------------


def _ingestion(sqlite_url: str) -> Ingestion:
    return ingestion_for(Settings(database_url=sqlite_url, broker_url=None,  # type: ignore[call-arg]
                                  _env_file=None, patient_id_key=SecretStr(KEY)))


def _copies(sessions: sessionmaker[Session]) -> list[tuple[str, int]]:
    with sessions() as session:
        return sorted((Path(copy.source).name, copy.image_id) for copy in session.execute(
            select(DuplicateSubmission)).scalars())


@pytest.mark.parametrize("same_batch", [False, True])
def test_a_retake_under_a_reused_uid_is_a_clash_not_a_copy(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session],
        same_batch: bool) -> None:
    sessions, ingestion = each_backend_sessions, _ingestion(sqlite_url)
    first = _view(tmp_path / "a" / "first.dcm", _pixels())
    retake = _retake(tmp_path / "b" / "retake.dcm")
    if same_batch:
        batch = registered_batch(sessions, [first, retake], ingestion)
    else:
        registered_batch(sessions, [first], ingestion)
        batch = registered_batch(sessions, [retake], ingestion)
    original, clash = stored_images(sessions)
    assert (original.state, original.source) == ("queued", str(first))
    assert original.pixel_fingerprint == pixel_fingerprint(first) is not None
    assert (clash.state, clash.error_code, clash.batch_id, clash.source) == (
        "failed", ErrorCode.UID_CONFLICT.value, batch, str(retake))
    assert _copies(sessions) == []
    message = clash.error_message or ""
    assert f"{SOP} already names image {original.id} (480 x 600 px, R MLO)" in message
    assert "they differ in pixel data." in message
    assert "headers agree in size, laterality, view, exam and patient" in message
    assert "another exposure of that view" in message


def test_copies_stay_copies_however_they_travelled(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    sessions, ingestion = each_backend_sessions, _ingestion(sqlite_url)
    first = _view(tmp_path / "a" / "first.dcm", _pixels())
    copy = tmp_path / "b" / "copy.dcm"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    routed = _routed(first, tmp_path / "b" / "routed.dcm")
    recompressed = _recompressed(first, tmp_path / "b" / "recompressed.dcm")
    registered_batch(sessions, [first], ingestion)
    registered_batch(sessions, [copy, routed, recompressed], ingestion)
    [image] = stored_images(sessions)
    assert image.state == "queued"
    assert _copies(sessions) == [("copy.dcm", image.id), ("recompressed.dcm", image.id),
                                 ("routed.dcm", image.id)]


def test_an_image_registered_before_fingerprints_compares_by_its_header(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    # Rows from before the migration hold no fingerprint: nothing says the pixels differ,
    # and the file is taken for a copy, as it was.
    sessions, ingestion = each_backend_sessions, _ingestion(sqlite_url)
    registered_batch(sessions, [_view(tmp_path / "a" / "first.dcm", _pixels())], ingestion)
    with sessions() as session:
        session.execute(update(Image).values(pixel_fingerprint=None))
        session.commit()
    registered_batch(sessions, [_retake(tmp_path / "b" / "retake.dcm")], ingestion)
    [image] = stored_images(sessions)
    assert _copies(sessions) == [("retake.dcm", image.id)]


def test_a_file_failed_half_written_is_retried_whole_then_told_from_a_retake(
        tmp_path: Path, sqlite_url: str, each_backend_sessions: sessionmaker[Session]) -> None:
    # Registered while still being written, the file's pixels could not be sampled; the
    # worker failed it as truncated. The complete file sent again is that image, retried.
    sessions, ingestion = each_backend_sessions, _ingestion(sqlite_url)
    whole = _view(tmp_path / "whole" / "view.dcm", _pixels())
    path = _cut(whole, tmp_path / "drop" / "view.dcm", 0.5)
    registered_batch(sessions, [path], ingestion)
    [half] = stored_images(sessions)
    assert (half.state, half.pixel_fingerprint) == ("queued", None)
    failed_at = {"state": "failed", "error_code": ErrorCode.TRUNCATED.value,
                 "error_message": "cut short"}
    with sessions() as session:
        session.execute(update(Image).values(**failed_at, finished_at=half.created_at))
        session.commit()
    shutil.copy(whole, path)  # written since the failure
    registered_batch(sessions, [path], ingestion)
    [retried] = stored_images(sessions)
    assert (retried.id, retried.state) == (half.id, "queued")
    assert retried.pixel_fingerprint == pixel_fingerprint(whole) is not None
    # Its pixels are now known: a re-take under its UID is told from it.
    registered_batch(sessions, [_retake(tmp_path / "b" / "retake.dcm")], ingestion)
    assert [i.error_code for i in stored_images(sessions)] == [None, ErrorCode.UID_CONFLICT.value]
    # A failure for the file's state is retried whatever its fingerprint says: the
    # fingerprint may be a half-written file's.
    other = _view(tmp_path / "c" / "view.dcm", _pixels(seed=2))
    with sessions() as session:
        session.execute(update(Image).where(Image.id == half.id).values(
            **failed_at, finished_at=half.created_at))
        session.commit()
    registered_batch(sessions, [other], ingestion)
    assert stored_images(sessions)[0].state == "queued"


# --- through `mammo run` ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_mammo_run_scores_a_copy_once_and_refuses_a_retake(
        backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, tiny_model_dir: Path) -> None:
    url = (f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    folder = tmp_path / "night"
    first = _view(folder / "c40_first.dcm", _pixels())
    _retake(folder / "c41_retake.dcm")
    _routed(first, folder / "c42_routed_copy.dcm")
    result = run_cli(["run", str(folder), "--format", "json"], monkeypatch, tmp_path,
                     database_url=url, model=str(tiny_model_dir),
                     report_dir=str(tmp_path / "reports"), patient_id_key=KEY)
    assert result.exit_code == ExitCode.IMAGES_FAILED, result.output
    rows = {Path(row["source"]).name: row for row in json.loads(result.stdout)}
    first_row, retake, routed = (rows[name] for name in (
        "c40_first.dcm", "c41_retake.dcm", "c42_routed_copy.dcm"))
    assert first_row["state"] == "done" and first_row["duplicate_of"] is None
    assert (retake["state"], retake["error_code"], retake["duplicate_of"]) == (
        "failed", "uid_conflict", None)
    assert retake["p_malignant"] is None
    assert "pixel data" in retake["error_message"]
    assert routed["duplicate_of"] == first_row["image_id"]
    assert routed["p_malignant"] == first_row["p_malignant"] is not None
