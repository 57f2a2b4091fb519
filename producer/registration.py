"""Record submitted files in the database before anything is queued.

The database row is committed first and the wake-up message sent second, so a crash between
the two leaves a ``queued`` row that ``mammo recover`` finds, never a message without a row.
Identity (SOPInstanceUID, else a content hash) plus ``INSERT ... ON CONFLICT DO NOTHING``
makes resubmission a no-op, even when two producers race.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, delete, exists, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from producer.discovery import source_text
from producer.manifest import (
    FileMetadata,
    Manifest,
    apply_metadata,
    exam_key,
    legacy_manifest_key,
    metadata_source,
)
from shared.config import Settings
from shared.db.clock import Clocks, database_now
from shared.db.schema import Batch, DuplicateSubmission, Image, Prediction, Study
from shared.db.upsert import insert_missing, upsert_returning_ids
from shared.enums import ErrorCode, ImageState, Priority
from shared.errors import BadFileNameError, InputError, first_line
from shared.exams import owe_exam_refresh
from shared.formatting import without_control
from shared.imaging.header_bounds import bounded, storable
from shared.imaging.pixel_fingerprint import pixel_fingerprint, pixels_differ
from shared.imaging.readers import Pseudonymize, read_header
from shared.imaging.readers.base import sha256_identity
from shared.imaging.types import ImageHeader
from shared.pseudonym import Pseudonymizer
from shared.timeutil import as_utc

log = logging.getLogger(__name__)

BLOCK = 500
# What the database raises for a value it will not store (a NUL PostgreSQL refuses, a
# constraint): a fault of this software, since every value read from a file is meant to
# fit, and the fault of one file, not of the block it came in (``_register_isolating``).
_REFUSED_VALUE = (DataError, IntegrityError)
_NOT_FOR_ITS_CONTENT = (ErrorCode.NO_PSEUDONYM_KEY, ErrorCode.BAD_FILE_NAME,
                        ErrorCode.UID_CONFLICT)
# Failures a second attempt can fix. Submitting the file again retries its image; any
# other failure is its content's, and the new submission is recorded as a copy of it.
# - The file's state: still being written (a DICOM keeps its SOPInstanceUID, so the complete
#   file has the failed image's identity), or gone. Retried when the file submitted is not
#   the one that failed: another path, or written to since the failure.
RETRIED_WHEN_THE_FILE_CHANGED = frozenset({
    ErrorCode.TRUNCATED, ErrorCode.MISSING_FILE, ErrorCode.UNREADABLE,
})
# - The installation's: a worker crashed on it, a decoder was missing, the size limit was
#   lower. Retried whenever submitted again (the poison message asks for just that).
RETRIED_ALWAYS = frozenset({
    ErrorCode.POISON, ErrorCode.INTERNAL, ErrorCode.TOO_LARGE,
    ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
})
# Where an image's laterality, view and exam came from (``images.metadata_origin``). Stated:
# a DICOM header, a manifest row (NULL, an image registered before it was kept, counts as
# stated). Inferred: the file-name convention, or nothing at all (read alone). A file known
# by its bytes sent again with a manifest row corrects inferred values (``_correct_inferred``);
# stated ones it contradicts make it a ``uid_conflict``.
FROM_HEADER, FROM_MANIFEST, FROM_NAME, FROM_NOTHING = "header", "manifest", "filename", "none"
INFERRED_ORIGINS = (FROM_NAME, FROM_NOTHING)


@dataclass
class Registration:
    # None only while no block has committed to a batch still to create (``NewBatch``).
    batch_id: int | None
    new_ids: list[int] = field(default_factory=list)  # retried failed images included
    rejected_ids: list[int] = field(default_factory=list)
    retried: dict[int, str] = field(default_factory=dict)  # image id -> its earlier error
    # Images whose inferred metadata this batch's manifest rows corrected, queued to be
    # scored again (also in ``new_ids``): image id -> what changed (``_correct_inferred``).
    reregistered: dict[int, str] = field(default_factory=dict)
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)  # source, id, state
    # Failed images of an earlier version of a file, removed (``_retire_superseded``).
    superseded: list[int] = field(default_factory=list)

    def absorb(self, other: Registration) -> None:
        """Add what ``other``, a block of the same batch, registered."""
        self.batch_id = other.batch_id if self.batch_id is None else self.batch_id
        self.new_ids += other.new_ids
        self.rejected_ids += other.rejected_ids
        self.retried.update(other.retried)
        self.reregistered.update(other.reregistered)
        self.duplicates += other.duplicates
        self.superseded += other.superseded

    @property
    def unfinished_duplicate_ids(self) -> list[int]:
        """Images submitted earlier and not finished yet, each once.

        A copy of a file new in this same batch (one image under two names) is not one of
        them: its image is already in ``new_ids``, and counting it again would make a caller
        wait for more finished images than there are.
        """
        active = (ImageState.QUEUED.value, ImageState.PROCESSING.value)
        new = set(self.new_ids)
        return list(dict.fromkeys(image_id for _, image_id, state in self.duplicates
                                  if state in active and image_id not in new))


def content_identity(path: Path) -> str:
    """Identity of a file whose header could not be read: its bytes, else its path."""
    try:
        return sha256_identity(path)
    except InputError:
        return f"path:{path}"


@dataclass(frozen=True)
class NewBatch:
    """A batch that ``register_files`` creates in the transaction of the first block it
    commits, so that a batch is never committed without files (``create_batch``)."""

    name: str | None
    priority: Priority
    mode: str
    # A watcher's day batch: joined if one of its name was made meanwhile (another watcher
    # on the folder registered first), as the watcher's own look-up by name would.
    join_named: bool = False

    def row(self, *, finished_at: datetime | None = None) -> Batch:
        return Batch(name=self.name, priority=self.priority.value, mode=self.mode,
                     finished_at=finished_at)


def create_batch(sessions: sessionmaker[Session], *, name: str | None, priority: Priority,
                 mode: str, finished: bool = False) -> int:
    """Commit a batch with no file yet; ``finished``: stamped finished now (the database's
    clock), for a batch that will get none (a submit whose files were gone). An open batch
    made here and left without files (its maker killed before registering any: the
    sweeper's ``lifecycle.discard_empty_batches``) is what ``NewBatch`` avoids."""
    with sessions() as session:
        batch = NewBatch(name, priority, mode).row(
            finished_at=database_now(session) if finished else None)
        session.add(batch)
        session.commit()
        return batch.id


@dataclass(frozen=True)
class Ingestion:
    """How files are read at registration: the PatientID pseudonymizer (None: no key, so
    patient-identified DICOM is refused) and where metadata for raster files comes from."""

    pseudonymize: Pseudonymize | None = None
    metadata: Callable[[Path], FileMetadata | None] | None = None
    manifest: Manifest | None = None  # also in ``metadata``: kept to warn of unused rows
    # Files the caller saw written to since their image failed (the drop folder watches
    # them): retried as changed whatever their mtime says against the failure's time,
    # which a file server's clock running behind the database's would deny.
    changed: frozenset[Path] = frozenset()


def ingestion_for(settings: Settings, manifest: Path | None = None) -> Ingestion:
    """The configured pseudonymizer, plus the manifest (if any) and filename convention."""
    pseudonymize = Pseudonymizer.from_settings(settings)
    rows = Manifest.load(manifest, pseudonymize=pseudonymize) if manifest else None
    return Ingestion(pseudonymize=pseudonymize, metadata=metadata_source(rows), manifest=rows)


class _Given(NamedTuple):
    """What a submission gives a file besides its header: a reference label (manifest), and
    where its laterality, view and exam came from (``FROM_HEADER``...)."""

    label: str | None = None
    origin: str | None = None


def _row(path: Path, batch_id: int, header: ImageHeader | None, error: InputError | None,
         study_id: int | None, given: _Given | None = None, *, now: datetime,
         fingerprint: str | None = None) -> dict[str, Any]:
    """``now``: the database's time (``_register_block``), which the row is stamped with;
    ``fingerprint``: the file's pixel fingerprint (``_fingerprints``)."""
    given = given or _Given()
    row: dict[str, Any] = {
        "batch_id": batch_id, "source": source_text(path), "study_id": study_id, "attempts": 0,
        "created_at": now,
    }
    if header is not None:
        row.update(
            identity=header.identity, format=header.format,
            sop_instance_uid=header.sop_instance_uid,
            series_instance_uid=header.series_instance_uid,
            laterality=header.laterality.value if header.laterality else None,
            view=header.view.value if header.view else None,
            rows=header.rows, columns=header.columns, manufacturer=header.manufacturer,
            manufacturer_model=header.manufacturer_model, state=ImageState.QUEUED.value,
            spacing_row_mm=header.pixel_spacing_mm[0] if header.pixel_spacing_mm else None,
            spacing_column_mm=header.pixel_spacing_mm[1] if header.pixel_spacing_mm else None,
            view_flags=",".join(header.view_flags) or None,
            burned_in_annotation=header.burned_in_annotation, voi=header.voi,
            reference_label=given.label, pixel_fingerprint=fingerprint,
            metadata_origin=given.origin,
        )
    else:
        assert error is not None
        # The message may quote a header value, and a NUL in it (storable).
        row.update(identity=_refusal_identity(error.code, path), format="unknown",
                   state=ImageState.FAILED.value, error_code=error.code.value,
                   error_message=storable(error.message), finished_at=now)
    return row


def _refusal_identity(code: ErrorCode, path: Path) -> str:
    """The identity a file refused unread (no header) is recorded under: its content's."""
    identity = content_identity(path)
    if code in _NOT_FOR_ITS_CONTENT:
        # Refused for want of configuration, for its name, for another file's UID or for
        # metadata its image was not registered with, not for its own bytes: once the key
        # is set, the file renamed or the conflict cleared (its manifest row corrected),
        # the same file must register as new (or as a copy of that image), not as a
        # duplicate of this failure (and never as the image whose UID it collided with).
        return f"{code.value}:{identity}"
    return identity


def study_key(header: ImageHeader) -> str | None:
    """The key of the exam an image belongs to, or None when nothing in it says.

    Its StudyInstanceUID (or the manifest's study ID with the patient's pseudonym); else,
    as some senders leave the UID
    out, the exam's accession number, with the patient's pseudonym when there is one (two
    sites' numbers may coincide, a patient's never do); else the patient and the study
    date. The key is stored as the study's UID, so the exam's other images, and the same
    files sent again, find the same study. A date alone would merge every patient of a day.
    """
    if header.study_instance_uid:
        return header.study_instance_uid
    patient = header.patient_pseudonym or ""
    # An accession number that was not valid text is keyed by its bytes (``accession_key``):
    # two read alike through replacement characters stay two exams.
    accession = header.accession_key or header.accession_number
    if accession:
        return exam_key("accession", f"{patient}:{accession}")
    if patient and header.study_date:
        return exam_key("date", f"{patient}:{header.study_date}")
    return None


def _study_ids(session: Session, headers: Iterable[ImageHeader | None],
               now: datetime) -> dict[str, int]:
    """Create or find the studies of a block's headers, in one round-trip: {key: id}.
    ``now``: the database's time, which new studies are stamped with."""
    rows: dict[str, dict[str, Any]] = {}
    for header in headers:
        uid = study_key(header) if header else None
        if header and uid and uid not in rows:
            rows[uid] = {
                "study_uid": uid, "accession_number": header.accession_number,
                "study_date": header.study_date, "patient_pseudonym": header.patient_pseudonym,
                "created_at": now,
            }
    adopted = _legacy_manifest_studies(session, rows)
    for uid in adopted:
        del rows[uid]
    return {**upsert_returning_ids(session, Study, list(rows.values()), conflict="study_uid"),
            **adopted}


def _legacy_manifest_studies(session: Session,
                             rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """{key: id} of the manifest exams registered before keys held the patient
    (``manifest:STUDY``) that a new key continues: same study ID, same patient, and no exam
    under the new key yet. A late image then joins its exam instead of starting a second
    one beside it."""
    legacy = {uid: old for uid, row in rows.items()
              if (old := legacy_manifest_key(uid, row["patient_pseudonym"]))}
    if not legacy:
        return {}
    current = set(session.execute(select(Study.study_uid).where(
        Study.study_uid.in_(list(legacy)))).scalars())
    earlier = {uid: (study_id, patient) for study_id, uid, patient in session.execute(
        select(Study.id, Study.study_uid, Study.patient_pseudonym).where(
            Study.study_uid.in_(list(legacy.values()))))}
    return {uid: earlier[old][0] for uid, old in legacy.items()
            if uid not in current and old in earlier
            and earlier[old][1] == rows[uid]["patient_pseudonym"]}


def register_files(
    sessions: sessionmaker[Session], batch: int | NewBatch, files: Iterable[Path], *,
    on_file: Callable[[Path], None] | None = None, ingestion: Ingestion | None = None,
) -> Registration:
    """Insert one row per new file (queued, or failed when its header is unreadable).

    ``batch``: the id of the batch the files join, or a ``NewBatch``, created in the
    transaction of the first block: its id is the result's ``batch_id``, None when no file
    was registered (none given, or the first block failed). Committed before its first
    block, a batch whose maker was killed (SIGKILL, OOM) while it walked the folder or read
    the first block's headers (a slow share, a table lock) stayed empty and "in progress"
    for ever.

    A file already known (same identity) gets no new row: a ``duplicate_submissions`` row
    records that this batch sent it again, and which image it repeats. The file this batch
    already registered under the same path (two watchers on one folder, a path given twice)
    is no copy of anything: it is neither recorded nor counted again.

    The batch's ``submitted`` and ``duplicates`` grow by this call's files, in one atomic
    UPDATE: a watcher's batch takes many calls, from more than one process at times.
    Manifest rows no file of the call matched are logged as a warning. A file with a value
    the database refuses is recorded failed (``internal_error``) with the database's
    reason, and the others of its block register (``_register_isolating``).
    """
    ingestion = ingestion or Ingestion()
    result = Registration(batch if isinstance(batch, int) else None)
    new = batch if isinstance(batch, NewBatch) else None
    block: list[Path] = []
    try:
        for path in files:
            block.append(path)
            if on_file:
                on_file(path)
            if len(block) >= BLOCK:
                _register_isolating(sessions, new, block, result, ingestion)
                block = []
        if block:
            _register_isolating(sessions, new, block, result, ingestion)
    finally:
        # Also when a later block failed: the blocks committed before it are the batch's.
        _count_submitted(sessions, result)
    if ingestion.manifest and (unmatched := ingestion.manifest.unmatched_warning()):
        log.warning("%s", unmatched)
    return result


def _count_submitted(sessions: sessionmaker[Session], result: Registration) -> None:
    count = len(result.new_ids) + len(result.rejected_ids) + len(result.duplicates)
    if not count or result.batch_id is None:
        return
    with sessions() as session:
        session.execute(update(Batch).where(Batch.id == result.batch_id).values(
            submitted=Batch.submitted + count,
            duplicates=Batch.duplicates + len(result.duplicates)),
            execution_options={"synchronize_session": False})
        session.commit()


def _register_isolating(sessions: sessionmaker[Session], new: NewBatch | None,
                        block: Sequence[Path], result: Registration,
                        ingestion: Ingestion) -> None:
    """Register ``block`` in one transaction; where the database refuses a value of it
    (``_REFUSED_VALUE``), its files one by one, the file refused recorded failed with the
    database's reason. One file's value failed the whole block: with a NUL in a header
    (since escaped), `mammo submit` ended in a traceback and `mammo watch` stopped, at the
    same file again at each restart, its good files never registered.

    ``result`` takes a block's ids only once it is committed: a refused block's rolled back
    (with the batch it was to create: ``new``, used while ``result`` has no batch yet).
    """
    part = Registration(result.batch_id)
    # This call's images so far: a later file of the same call corrects none of them.
    registered = frozenset(result.new_ids + result.rejected_ids)
    try:
        _register_block(sessions, new, block, part, ingestion, registered=registered)
    except _REFUSED_VALUE as exc:
        reason = f"{type(exc).__name__}: {first_line(exc.orig or exc)}"
        if len(block) > 1:
            log.warning("the database refused to register a block of %d files (%s); "
                        "registering them one by one", len(block),
                        without_control(reason, one_line=True))
            for path in block:
                _register_isolating(sessions, new, [path], result, ingestion)
            return
        # A failure records the file's path and content hash, none of its header's values;
        # should the database refuse that too, the error is the caller's.
        part = Registration(result.batch_id)
        _register_block(sessions, new, block, part, ingestion, registered=registered,
                        failure=_refused_by_database(block[0], reason))
    result.absorb(part)


def _refused_by_database(path: Path, reason: str) -> InputError:
    log.error("the database refused to register %s (%s): recorded as failed (%s); this is a "
              "fault of this software, not of the file", without_control(str(path), one_line=True),
              without_control(reason, one_line=True), ErrorCode.INTERNAL.value)
    return InputError(
        f"{path.name} was not registered because the database refused a value read from it "
        f"({reason[:300]}): a fault of this software, not of the file. Report it with this "
        "message, and submit the file again once the software is fixed.",
        code=ErrorCode.INTERNAL)


def _read(path: Path, ingestion: Ingestion) -> tuple[ImageHeader | None, InputError | None,
                                                     _Given | None]:
    """(header with manifest/convention metadata applied, or the error; its label and
    metadata's origin)."""
    if source_text(path) != str(path):
        # Name the part that is not UTF-8: a good file name in a badly named folder too.
        bad = next(part for part in reversed(path.parts) if source_text(Path(part)) != part)
        what = "file" if bad == path.name else "folder"
        return None, BadFileNameError(
            f"The {what} name '{source_text(Path(bad))}' is not valid UTF-8 (probably "
            "written by a system using another character set), and the database cannot "
            f"record a result under it. Rename the {what} in UTF-8 (e.g. `convmv -f latin1 "
            f"-t utf8 --notest NAME`) and submit it again."), None
    # Looked up first: a manifest row for a file refused as unreadable matched a file.
    metadata = ingestion.metadata(path) if ingestion.metadata else None
    try:
        header = read_header(path, pseudonymize=ingestion.pseudonymize)
    except InputError as exc:
        return None, exc, None
    except Exception as exc:  # a fault of this software: readers let it through
        log.exception("reading the header of %s failed", path.name)
        return None, InputError(
            f"{path.name} was not read because of a fault in this software, not in the file "
            f"({type(exc).__name__}: {first_line(exc)}); the traceback is in the log. Submit "
            "the file again once the software is fixed.", code=ErrorCode.INTERNAL), None
    label = metadata.label.value if metadata and metadata.label else None
    given = _Given(label, _origin(header, metadata))
    return bounded(apply_metadata(header, metadata)), None, given


def _origin(header: ImageHeader, metadata: FileMetadata | None) -> str:
    """Where the file's laterality, view and exam come from (``images.metadata_origin``)."""
    if header.format == "dicom":
        return FROM_HEADER  # a manifest row only fills what the header leaves out: stated too
    if metadata is None:
        return FROM_NOTHING
    return FROM_NAME if metadata.inferred else FROM_MANIFEST


_Read = tuple[Path, ImageHeader | None, InputError | None, _Given | None]


def _refuse_other_patients(session: Session, read: list[_Read]) -> list[_Read]:
    """``read`` with each file whose exam (study key) belongs to another patient refused as
    a ``uid_conflict``: read against that patient's other breast, its score would mix two
    women's images, and the exam would be listed under the first patient alone.

    The exam's patient is its stored pseudonym, or else the first one this block gives it.
    Only a StudyInstanceUID can clash: every other study key holds the patient. A file
    whose identity is stored already is left to ``_uid_clash``, which names what differs
    from that image (a reused SOP Instance UID), or takes it as the copy it is."""
    headers = [header for _, header, _, _ in read if header]
    stored = set(session.scalars(select(Image.identity).where(
        Image.identity.in_({header.identity for header in headers})))) if headers else set()
    keys = {key for header in headers if (key := study_key(header))}
    patient_of: dict[str, str | None] = {
        uid: patient for uid, patient in session.execute(
            select(Study.study_uid, Study.patient_pseudonym).where(Study.study_uid.in_(keys)))
    } if keys else {}
    checked: list[_Read] = []
    for path, header, error, given in read:
        key = study_key(header) if header else None
        ours = header.patient_pseudonym if header else None
        if key is None or ours is None or header is None or header.identity in stored:
            checked.append((path, header, error, given))
            continue
        theirs = patient_of.get(key)
        if theirs is None:  # a new exam, or one whose files named no patient so far
            patient_of[key] = theirs = ours
        if theirs == ours:
            checked.append((path, header, error, given))
            continue
        checked.append((path, None, InputError(
            f"Its StudyInstanceUID {key} already names an exam of patient {theirs}, and this "
            f"file's patient is {ours}: one exam holds one patient's images, so the sending "
            "system reused the UID or filed the image under the wrong patient. It is not "
            "scored in that exam nor read against its images: check which patient it is, "
            "and have the modality or PACS resend it with its own StudyInstanceUID (or the "
            "right PatientID).", code=ErrorCode.UID_CONFLICT), None))
    return checked


def _register_block(sessions: sessionmaker[Session], new: NewBatch | None,
                    block: Sequence[Path], result: Registration, ingestion: Ingestion, *,
                    failure: InputError | None = None,
                    registered: frozenset[int] = frozenset()) -> None:
    """``failure``: the error every file of the block is recorded failed with, unread.
    The block joins ``result.batch_id``; while that is None, the batch ``new``, inserted in
    the block's own transaction (committed with its rows, or not at all). ``registered``:
    the images the call registered in its earlier blocks."""
    # Headers first, outside any transaction; then one round-trip per kind of row.
    normal = [_normalised(path) for path in block]
    read = [(path, *(_read(path, ingestion) if failure is None else (None, failure, None)))
            for path in normal]
    prints = _fingerprints(read)
    # Sources as given, where they differ: how rows registered before sources were
    # normalised name these files.
    given = {source_text(path): source_text(seen)
             for path, seen in zip(block, normal, strict=True) if path != seen}
    with sessions() as session:
        # Every time stamped here is the database's, the clock they are judged on: an image's
        # created_at starts its exam's time-out (``exams``) and, until its message is sent,
        # its queued age (``lifecycle.stale_images``). Stamped on a producer's clock 40
        # minutes behind the server, a fresh exam closed as incomplete at once and a row
        # committed but not yet sent was re-sent as lost.
        clocks = Clocks.read(session)
        now = clocks.now
        batch_id = _batch_for_block(session, result.batch_id, new)
        studies = _study_ids(session, (header for _, header, _, _ in read), now)
        read = _refuse_other_patients(session, read)
        owners = [_Owner(study_key(header), header.patient_pseudonym) if header else _Owner()
                  for _, header, _, _ in read]
        rows = [_row(path, batch_id, header, error,
                     studies.get(owner.study_uid or "") if header else None, told, now=now,
                     fingerprint=prints.get(path))
                for owner, (path, header, error, told) in zip(owners, read, strict=True)]
        paths = {row["source"]: path for row, (path, *_) in zip(rows, read, strict=True)}
        owner_of = {row["source"]: owner for row, owner in zip(rows, owners, strict=True)}
        rows = _adopt_refused(session, rows, paths, result, given, now)
        existing = _insert_new(session, rows, result)
        known = _known(session, existing)
        corrected, tried = _correct_inferred(session, batch_id, existing, known, owner_of,
                                             result, registered, now)
        if tried:  # what is left is judged against the images as they now are
            existing = [row for row in existing if row["source"] not in corrected]
            known = _known(session, existing)
        clashes = {row["source"]: found for row in existing
                   if (found := _uid_clash(row, owner_of[row["source"]],
                                           known[row["identity"]]))}
        if clashes:
            refused = [_row(paths[row["source"]], batch_id, None,
                            _clash_error(row, known[row["identity"]], clashes[row["source"]]),
                            None, now=now)
                       for row in existing if row["source"] in clashes]
            existing = ([row for row in existing if row["source"] not in clashes]
                        + _insert_new(session, refused, result))
            known = _known(session, existing)
        existing = [row for row in existing
                    if not _retry(session, batch_id, row, paths[row["source"]],
                                  known[row["identity"]], result, ingestion.changed, clocks)
                    and not _registered_here(row, known[row["identity"]], batch_id)]
        for row in existing:
            result.duplicates.append((row["source"], known[row["identity"]].id,
                                      known[row["identity"]].state))
        session.add_all(DuplicateSubmission(batch_id=batch_id, image_id=known[r["identity"]].id,
                                            source=r["source"], created_at=now)
                        for r in existing)
        _retire_superseded(session, batch_id, rows, given, result)
        session.commit()
    result.batch_id = batch_id


def _batch_for_block(session: Session, batch_id: int | None, new: NewBatch | None) -> int:
    """``batch_id``, or the id of ``new`` inserted (not committed) in ``session``."""
    if batch_id is not None:
        return batch_id
    assert new is not None, "a registration needs a batch id or a NewBatch"
    if new.join_named:
        found = session.scalar(select(Batch.id).where(Batch.name == new.name)
                               .order_by(Batch.id).limit(1))
        if found is not None:
            return int(found)
    batch = new.row()
    session.add(batch)
    session.flush()
    return batch.id


def _fingerprints(read: list[_Read]) -> dict[Path, str | None]:
    """{path: pixel fingerprint} of the files a SOP Instance UID names (the identity that
    can clash, ``_uid_clash``), read before any transaction opens, as headers are: a length
    and a few small chunks of the pixel data, never the file whole."""
    return {path: pixel_fingerprint(path) for path, header, _, _ in read
            if header is not None and header.identity.startswith("sop:")}


def _insert_new(session: Session, rows: list[dict[str, Any]],
                result: Registration) -> list[dict[str, Any]]:
    """Insert the rows whose identity is new; return the others (already known)."""
    rows, repeats = _split_repeats(rows)
    inserted = set(insert_missing(session, Image, rows, conflict=("identity",),
                                  returning=Image.identity))
    ids = dict(session.execute(
        select(Image.identity, Image.id).where(Image.identity.in_(inserted))).all())
    for row in rows:
        if row["identity"] in inserted:
            target = result.new_ids if row["state"] == ImageState.QUEUED.value \
                else result.rejected_ids
            target.append(ids[row["identity"]])
    return [r for r in rows if r["identity"] not in inserted] + repeats


def _known(session: Session, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{identity: the stored image's id, state and geometry} for ``rows``' identities."""
    if not rows:
        return {}
    return {found.identity: found for found in session.execute(
        select(Image.identity, Image.id, Image.batch_id, Image.state, Image.error_code,
               Image.source, Image.finished_at, Image.format, Image.rows, Image.columns,
               Image.laterality, Image.view, Image.study_id, Image.pixel_fingerprint,
               Image.metadata_origin, Study.study_uid, Study.patient_pseudonym)
        .outerjoin(Study, Image.study_id == Study.id)
        .where(Image.identity.in_({r["identity"] for r in rows})))}


def _registered_here(row: dict[str, Any], stored: Any, batch_id: int) -> bool:
    """This very file (same path) is already this batch's image: not a copy of it."""
    return bool(stored.batch_id == batch_id and _same_source(stored.source, row["source"]))


def _normalised(path: Path) -> Path:
    """``path`` absolute, with ``.`` and ``..`` collapsed, as the database stores it.

    Symlinks are kept, not resolved: the drop folder knows its files by the paths it sees.
    Where a ``..`` follows a symlinked folder, collapsing it would name another file (the
    link's parent, not its target's), and the path stays as given.
    """
    path = path.absolute()
    normal = Path(os.path.abspath(path))
    if normal == path:
        return path
    try:
        return normal if os.path.samefile(normal, path) else path
    except OSError:  # missing: registration records it under the path it was given
        return path


def _same_source(stored: str, source: str) -> bool:
    """Whether two stored sources name one path; rows registered before sources were
    normalised may hold a ``..`` or ``.``."""
    return stored == source or os.path.abspath(stored) == os.path.abspath(source)


def _retry(session: Session, batch_id: int, row: dict[str, Any], path: Path, stored: Any,
           result: Registration, seen_changed: frozenset[Path], clocks: Clocks) -> bool:
    """Queue a failed image again, in this batch, under this file's path, when this
    submission read cleanly and the earlier failure was one a new attempt can fix."""
    if (row["state"] != ImageState.QUEUED.value or stored.state != ImageState.FAILED.value
            or stored.id in result.retried):  # the same file twice in one block
        return False
    if stored.error_code not in RETRIED_ALWAYS and not (
            stored.error_code in RETRIED_WHEN_THE_FILE_CHANGED
            and (path in seen_changed
                 or _changed_since(path, row["source"], stored, clocks))):
        return False
    # Guarded on the state: of two producers re-sending it at once, one retries it.
    # The image is read from this file now: its pixels are the ones a copy must match.
    values = {**_queued_again(clocks.now), "source": row["source"], "batch_id": batch_id,
              "pixel_fingerprint": row.get("pixel_fingerprint")}
    if stored.format == "unknown":
        # Refused unread (a fault of this software, a lower size limit): it holds no header,
        # and takes the one read now, as an adopted refusal does (``_adopt_refused``). Left
        # out, a PNG retried this way was scored with no laterality, view or exam: read
        # alone, its manifest row dropped without a word.
        values = {**row, **values}
    taken = session.execute(
        update(Image).where(Image.id == stored.id, Image.state == ImageState.FAILED.value)
        .values(**values)
        .returning(Image.id).execution_options(synchronize_session=False)).scalar_one_or_none()
    if taken is None:
        return False
    result.new_ids.append(stored.id)
    result.retried[stored.id] = stored.error_code
    return True


# Refusals recorded unread, under the file's content (``_refusal_identity``), that the same
# file reads cleanly after: a key set, or this software fixed (a reader's fault, a value the
# database refused). Its header identity (a DICOM's UID) is not the refusal's.
_ADOPTED_REFUSALS = (ErrorCode.NO_PSEUDONYM_KEY.value, ErrorCode.INTERNAL.value)


def _adopt_refused(session: Session, rows: list[dict[str, Any]], paths: dict[str, Path],
                   result: Registration, given: dict[str, str],
                   now: datetime) -> list[dict[str, Any]]:
    """Queue the image refused unread (``_ADOPTED_REFUSALS``), now that the same file (same
    path, same bytes) reads cleanly; return the rows still to insert.

    The refusal's identity is its content hash, not the DICOM UID the file now registers
    under, so without this the resubmission would be a second image and the refusal would
    stay among the failures for good, though the remedy its message gives (set the key, or
    submit the file again once the software is fixed) was followed. The failed row takes
    the file's header and joins this batch, as a retried failure does.
    """
    readable = {row["source"]: row for row in rows if row["state"] == ImageState.QUEUED.value}
    if not readable:
        return rows
    # A refusal recorded before sources were normalised holds the path as it was given.
    former = {old: new for old, new in given.items() if new in readable}
    refused = session.execute(select(Image.id, Image.identity, Image.source, Image.batch_id,
                                     Image.error_code)
                              .where(Image.source.in_([*readable, *former]),
                                     Image.state == ImageState.FAILED.value,
                                     Image.error_code.in_(_ADOPTED_REFUSALS))
                              .order_by(Image.id)).all()
    adopted: set[str] = set()
    for stored in refused:
        row = readable[former.get(stored.source, stored.source)]
        if stored.identity == row["identity"]:
            continue  # a file known by its content (no UID): found as itself, retried (_retry)
        path = paths[row["source"]]
        if stored.identity != _refusal_identity(ErrorCode(stored.error_code), path):
            continue  # another file at that path now: the refusal stays its own
        registered = session.scalar(select(Image.id).where(Image.identity == row["identity"]))
        if registered is not None:  # its image was registered since, from another path
            _retire_refusal(session, stored, registered, now)
            continue  # and this submission is a copy of that image, like any other
        try:
            with session.begin_nested():  # a racing producer may insert the identity first
                taken = session.execute(
                    update(Image).where(Image.id == stored.id,
                                        Image.state == ImageState.FAILED.value)
                    .values(**{**row, **_queued_again(now)})
                    .returning(Image.id).execution_options(synchronize_session=False)
                ).scalar_one_or_none()
        except IntegrityError:
            continue
        if taken is not None:
            result.new_ids.append(stored.id)
            result.retried[stored.id] = stored.error_code
            adopted.add(row["source"])
    return [row for row in rows if row["source"] not in adopted]


def _queued_again(now: datetime) -> dict[str, Any]:
    """What a failed image queued again (retried, or its refusal adopted) is set to: the
    image of a file registered now, not yet sent, never claimed, nowhere else.

    ``archived_path`` goes: it is where the watcher filed the failed file (failed/x.dcm), and
    readers prefer it to the source (``current_location``), so the worker read the old half
    file again, not the complete one re-sent under its name, and failed it as truncated.
    ``created_at`` is ``now``, the database's time: a row not yet sent counts as queued from
    it (``stale_images``, the oldest queued age of `mammo status`), and the failure's made a
    sweep between the commit and the send re-send the image with a warning that its message
    was lost.
    """
    return {"state": ImageState.QUEUED.value, "attempts": 0, "claim_token": None,
            "claimed_at": None, "error_code": None, "error_message": None,
            "finished_at": None, "enqueued_at": None, "archived_path": None,
            "created_at": now}


def _retire_refusal(session: Session, refused: Any, image_id: int, now: datetime) -> None:
    """The refused file is a copy of ``image_id``, registered since under another path:
    its batch records it as such (as registration would have, had the key been set), the
    copies recorded of the refusal point at that image, and the refusal is gone."""
    session.execute(update(DuplicateSubmission)
                    .where(DuplicateSubmission.image_id == refused.id)
                    .values(image_id=image_id).execution_options(synchronize_session=False))
    session.add(DuplicateSubmission(batch_id=refused.batch_id, image_id=image_id,
                                    source=refused.source, created_at=now))
    session.execute(update(Batch).where(Batch.id == refused.batch_id)
                    .values(duplicates=Batch.duplicates + 1)
                    .execution_options(synchronize_session=False))
    session.execute(delete(Image).where(Image.id == refused.id,
                                        Image.state == ImageState.FAILED.value)
                    .execution_options(synchronize_session=False))


_CONTENT = "sha256:"  # the identity of a file known by its bytes (``sha256_identity``)


def _failed_for_its_state() -> ColumnElement[bool]:
    """An image failed for its file's state (``RETRIED_WHEN_THE_FILE_CHANGED``) and known
    by its content: a DICOM UID names the image whatever the bytes (``_retry`` queues that
    same image again)."""
    return and_(Image.state == ImageState.FAILED.value,
                Image.error_code.in_([code.value for code in RETRIED_WHEN_THE_FILE_CHANGED]),
                Image.identity.startswith(_CONTENT))


def _superseded(batch_id: int) -> ColumnElement[bool]:
    """An image of ``batch_id`` failed for its state that a new version of its file may
    replace: still where it was registered (a file filed to failed/ is final), and nothing
    else holds it: no copy of it recorded, no result."""
    return and_(Image.batch_id == batch_id, _failed_for_its_state(),
                Image.archived_path.is_(None),
                ~exists().where(DuplicateSubmission.image_id == Image.id),
                ~exists().where(Prediction.image_id == Image.id))


def _retire_superseded(session: Session, batch_id: int, rows: list[dict[str, Any]],
                       given: dict[str, str], result: Registration) -> None:
    """Remove what an earlier version of a file left in this batch when the file, known by
    its bytes, is registered again with other bytes: its failed image (``_superseded``), or
    its record as a copy of a failed image (an empty file is a copy of every empty file).

    A file without a DICOM UID is identified by its bytes, so each version of a file
    registered while its writer was still at it (a stall past the grace period, an empty
    file filled later) became an image of its own: the half file's failed ``truncated`` or
    ``unreadable`` for ever beside the complete file's result, in the batch's counts, its
    failure list and `mammo status`. One file is one image: what the version the file no
    longer holds left goes, and the batch counts the file once. Another batch's failure
    stays (a name reused another day is another image), as does a failure that the new
    version contradicts in what both say (pixel size, format, laterality, view, exam).

    The delete repeats the conditions, so of two producers registering the file at once one
    removes the image, and an image queued again, filed away or copied meanwhile is kept.
    """
    current = {row["source"]: row for row in rows if row["identity"].startswith(_CONTENT)}
    if not current:
        return
    # A row recorded before sources were normalised holds the path as it was given.
    former = {old: new for old, new in given.items() if new in current}
    copies = _drop_superseded_copies(session, batch_id, current, former)
    found = session.execute(
        select(Image.id, Image.identity, Image.source, Image.error_code, Image.format,
               Image.rows, Image.columns, Image.laterality, Image.view, Image.study_id)
        .where(Image.source.in_([*current, *former]), _superseded(batch_id))
        .order_by(Image.id)).all()
    registered_now = {*result.new_ids, *result.rejected_ids}
    retired: list[int] = []
    for old in found:
        row = current[former.get(old.source, old.source)]
        if (old.identity == row["identity"] or old.id in registered_now
                or _another_image(row, old)):
            continue
        try:
            with session.begin_nested():  # a copy of it recorded by a racing producer
                gone = session.execute(
                    delete(Image).where(Image.id == old.id, _superseded(batch_id))
                    .returning(Image.id).execution_options(synchronize_session=False)
                ).scalar_one_or_none()
        except IntegrityError:
            continue
        if gone is not None:
            retired.append(gone)
            log.info("image %d (%s, failed %s) removed: its file now holds a new version, "
                     "registered in its place", gone,
                     without_control(old.source, one_line=True), old.error_code)
    if retired or copies:  # the file was counted at each version; once it is
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(submitted=Batch.submitted - len(retired) - copies,
                                duplicates=Batch.duplicates - copies)
                        .execution_options(synchronize_session=False))
        result.superseded += retired


def _drop_superseded_copies(session: Session, batch_id: int, current: dict[str, Any],
                            former: dict[str, str]) -> int:
    """Delete this batch's records of these files as copies of images failed for their
    state (``_failed_for_its_state``) whose bytes they no longer hold; how many."""
    stale = session.execute(
        select(DuplicateSubmission.id, DuplicateSubmission.source, Image.identity)
        .join(Image, Image.id == DuplicateSubmission.image_id)
        .where(DuplicateSubmission.batch_id == batch_id,
               DuplicateSubmission.source.in_([*current, *former]), _failed_for_its_state())
    ).all()
    ids = [copy.id for copy in stale
           if copy.identity != current[former.get(copy.source, copy.source)]["identity"]]
    if not ids:
        return 0
    return len(session.execute(
        delete(DuplicateSubmission).where(DuplicateSubmission.id.in_(ids))
        .returning(DuplicateSubmission.id).execution_options(synchronize_session=False)
    ).all())


def _another_image(row: dict[str, Any], stored: Any) -> bool:
    """Whether a new version of a file names another image than ``stored`` did: a value
    both know differs (a failure recorded unread knows none)."""
    def known(value: Any) -> Any:
        return None if value == "unknown" else value

    names = ("format", "rows", "columns", "laterality", "view", "study_id")
    return any(known(row.get(name)) is not None and known(getattr(stored, name)) is not None
               and row.get(name) != getattr(stored, name) for name in names)


def _changed_since(path: Path, source: str, stored: Any, clocks: Clocks) -> bool:
    """Whether ``path`` is not the file that failed: another path, or written since (a
    file gone again is not: the worker would only fail it as missing)."""
    failed_at = as_utc(stored.finished_at)
    if not _same_source(stored.source, source) or failed_at is None:
        return True
    return clocks.written_after(path, failed_at)


def _correct_inferred(session: Session, batch_id: int, existing: list[dict[str, Any]],
                      known: dict[str, Any], owner_of: dict[str, _Owner], result: Registration,
                      registered: frozenset[int], now: datetime) -> tuple[set[str], bool]:
    """Re-register with this submission's manifest row each image whose laterality, view or
    exam were only inferred (``INFERRED_ORIGINS``: its file name, or nothing: read alone)
    and that the row gives other ones (``_states_other``: where the image had none too):
    it takes the row's values, as a first registration with the row would, joins this
    batch under this file's path and is queued to be scored again. Returns the sources so
    corrected, and whether any was tried (a refused try leaves ``known`` stale).

    A site runs `mammo run folder/` on PNGs with no manifest, then runs the folder again
    with the manifest that forms its exams: each file's bytes are already an image, read
    alone. Taken for a copy, the exam never held it (a malignant view left out of its score
    and worklist row); refused as a ``uid_conflict``, it could never join its exam, since
    nothing else changes a registered image's metadata. A guess yields to a statement.
    Stated values (a DICOM header, an earlier manifest row) never do: that stays a conflict.

    As a re-score does, the image is queued again (``_queued_again``: registered anew, its
    ``created_at`` now): its earlier predictions stay in the table as history (one per
    model version; the same version scoring it again replaces its own, as a re-read does),
    and one that cannot be read again fails rather than keep a score read under the
    values it no longer has. An image a worker holds is taken from it: its claim is
    cleared, so the worker's save, fenced by its claim (``lifecycle.mark_done``), discards
    the result read under the earlier values, as for a lease taken over. The update is
    guarded on the values being still inferred: of two producers correcting it at once, the
    second finds the first's row and is judged against it (a copy, or a conflict). An image
    this same call registered (the same bytes given twice, one with a row) is not
    corrected: that stays a conflict. Its exam owes a refresh (``owe_exam_refresh``) in this
    transaction, so its stored result no longer stands complete without the image.
    """
    this_call = registered | set(result.new_ids) | set(result.rejected_ids)
    corrected: dict[str, int] = {}
    tried = False
    for row in existing:
        stored = known[row["identity"]]
        owner = owner_of[row["source"]]
        if (row.get("metadata_origin") != FROM_MANIFEST or row["source"] in corrected
                or stored.metadata_origin not in INFERRED_ORIGINS or stored.id in this_call
                or not _states_other(row, stored)):
            continue
        tried = True
        taken = session.execute(
            update(Image).where(Image.id == stored.id, Image.identity == row["identity"],
                                Image.metadata_origin.in_(INFERRED_ORIGINS))
            .values(**{**row, **_queued_again(now)})
            .returning(Image.id).execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if taken is None:
            continue  # corrected meanwhile (another producer): judged against its values
        what = _corrections(row, owner, stored)
        log.info("image %d (%s; %s): its metadata was %s; re-registered with the manifest "
                 "row of %s (%s) and queued to be scored again%s; its earlier predictions "
                 "are kept as history", stored.id, stored.state,
                 without_control(stored.source, one_line=True), _inferred_how(stored),
                 without_control(row["source"], one_line=True), what,
                 " (taken from the worker holding it, whose result is discarded)"
                 if stored.state == ImageState.PROCESSING.value else "")
        result.new_ids.append(stored.id)
        result.reregistered[stored.id] = what
        corrected[row["source"]] = stored.id
    if corrected:
        owe_exam_refresh(session, list(corrected.values()))
    return set(corrected), tried


def _states_other(row: dict[str, Any], stored: Any) -> bool:
    """Whether the row states a laterality, view or exam other than the image's: one the
    image was given none of counts too (its values were not stated, so nothing is
    filled in: the row corrects them all), a value the row leaves out does not."""
    return any(row.get(name) is not None and row[name] != getattr(stored, name)
               for name in ("laterality", "view", "study_id"))


def _inferred_how(stored: Any) -> str:
    if stored.metadata_origin == FROM_NAME:
        return "inferred from its file name (the mini-MIAS convention)"
    return "not given (no manifest row: it was read alone)"


def _corrections(row: dict[str, Any], owner: _Owner, stored: Any) -> str:
    """What a manifest row changed of an image's inferred metadata, in a few words."""
    changes = [f"{name} {getattr(stored, name) or 'unknown'} -> {row.get(name) or 'unknown'}"
               for name in ("laterality", "view") if row.get(name) != getattr(stored, name)]
    if row["study_id"] != stored.study_id:
        was = ("read alone" if stored.study_id is None
               else f"was {_exam_named(stored.study_uid)}")
        changes.append(f"exam: {_exam_named(owner.study_uid)} ({was})")
    return ", ".join(changes)


class _Owner(NamedTuple):
    """The exam (its study key) and the patient (pseudonym) a file's header names."""

    study_uid: str | None = None
    patient: str | None = None


# What a re-sent copy of an image cannot change: a corrected header may fill in laterality
# or view, never contradict them, and never alter the pixel matrix.
_INTRINSIC = {"pixel size": ("rows", "columns"), "laterality": ("laterality",),
              "view": ("view",)}


_PIXELS = "pixel data"


def _differ(ours: Any, theirs: Any) -> bool:
    """Both known, and not the same: a value left out says nothing against the other."""
    return ours is not None and theirs is not None and ours != theirs


def _uid_clash(row: dict[str, Any], owner: _Owner, stored: Any) -> list[str]:
    """What tells the file apart from the image its SOP Instance UID already names: a
    sender reused the UID (DICOM forbids it). Empty for a copy of that image. A file known
    by its bytes: ``_content_clash``.

    Another exam or another patient is another image however alike the two look: taken
    for a copy, the file would show that exam's result, and its own exam would miss a view.
    Where the header agrees in all of these, other pixel data (``pixels_differ``: both
    fingerprints taken, in one transfer syntax) is another exposure of that view, a re-take
    say: taken for a copy, it was never scored and showed the first image's result. A copy
    re-encoded by a PACS (another syntax), one with a header edited on the way (its pixel
    bytes unchanged) and an image registered before fingerprints were kept stay copies.
    """
    if row["identity"].startswith(_CONTENT):
        return _content_clash(row, owner, stored)
    if not row["identity"].startswith("sop:"):
        return []  # a file that could not be read: it says nothing of itself
    found = [what for what, names in _INTRINSIC.items()
             if any(_differ(row.get(name), getattr(stored, name)) for name in names)]
    if _differ(row["study_id"], stored.study_id):
        found.append(f"exam (image {stored.id}'s {_exam_named(stored.study_uid)}; this "
                     f"file's {_exam_named(owner.study_uid)})")
    found += _other_patient(owner, stored)
    if not found and not _failed_for_its_file(stored) and pixels_differ(
            row.get("pixel_fingerprint"), stored.pixel_fingerprint):
        found.append(_PIXELS)
    return found


def _other_patient(owner: _Owner, stored: Any) -> list[str]:
    if not _differ(owner.patient, stored.patient_pseudonym):
        return []
    return [f"patient (image {stored.id}'s {stored.patient_pseudonym}; this file's "
            f"{owner.patient})"]


def _content_clash(row: dict[str, Any], owner: _Owner, stored: Any) -> list[str]:
    """What a file known by its bytes (no SOP Instance UID: a PNG, JPEG, TIFF or PGM) is given
    now that the image those bytes already are was not. Empty for a copy of that image.

    Such a file's laterality, view and exam come from a manifest row or its name, not from
    the file, so the same bytes may come again with other ones. Taken for a copy, the file
    showed that image's result under its metadata, and the exam this submission names
    never held the image: a malignant view left out of its exam's score and worklist row.
    A laterality, view or patient counts where both say one, as for a DICOM (a value left
    out says nothing against the image's); an exam wherever this submission names one the
    image is not in, an image read alone included, as it would never join it. An image
    refused unread (format ``unknown``) was given none: nothing contradicts it.
    """
    if stored.format == "unknown":
        return []
    found = [name for name in ("laterality", "view")
             if _differ(row.get(name), getattr(stored, name))]
    if row["study_id"] is not None and row["study_id"] != stored.study_id:
        theirs = (_exam_named(stored.study_uid) if stored.study_id is not None
                  else "none: it was read alone")
        found.append(f"exam (image {stored.id}'s {theirs}; this file's "
                     f"{_exam_named(owner.study_uid)})")
    return found + _other_patient(owner, stored)


def _failed_for_its_file(stored: Any) -> bool:
    """An image failed for its file's state (cut short, unreadable, gone): its pixels as
    sampled at registration may be a half-written file's, and the complete file sent
    again is that image, retried (``_retry``), not another one."""
    return bool(stored.state == ImageState.FAILED.value
                and stored.error_code in RETRIED_WHEN_THE_FILE_CHANGED)


_DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_KEYED_BY = {"accession": "its accession number", "date": "its patient and study date",
             "manifest": "its manifest study_id"}


def _exam_named(key: str | None) -> str:
    """An exam as a message may name it: its StudyInstanceUID, or for an exam keyed by a
    header value (``study_key``) which kind of key, never the value (an AccessionNumber,
    a StudyDate), which is logged and stored with the failure."""
    if key and _DICOM_UID.fullmatch(key):
        return key
    kind = (key or "").partition(":")[0]
    if kind in _KEYED_BY:
        return f"an exam without a StudyInstanceUID, keyed by {_KEYED_BY[kind]}"
    return "an exam whose StudyInstanceUID is not a DICOM UID (not shown)"


def _clash_error(row: dict[str, Any], stored: Any, differences: list[str]) -> InputError:
    def described(rows: int | None, columns: int | None, *side: str | None) -> str:
        words = " ".join(v for v in side if v)
        return f"{columns} x {rows} px" + (f", {words}" if words else "")

    theirs = described(stored.rows, stored.columns, stored.laterality, stored.view)
    ours = described(row["rows"], row["columns"], row["laterality"], row["view"])
    if row["identity"].startswith(_CONTENT):
        return _content_clash_error(row, stored, theirs, ours, differences)
    pixels = (" Their headers agree in size, laterality, view, exam and patient, but their "
              "pixels are not the same: another exposure of that view (a re-take, say), not "
              "a copy of the image." if _PIXELS in differences else "")
    return InputError(
        f"Its SOP Instance UID {row['sop_instance_uid']} already names image {stored.id} "
        f"({theirs}), a different image from this one ({ours}): they differ in "
        f"{', '.join(differences)}.{pixels} A UID must name one image only, so the sending "
        "system reused it. Neither image takes the other's result: have the modality or "
        "PACS resend this one with a new UID.",
        code=ErrorCode.UID_CONFLICT)


def _content_clash_error(row: dict[str, Any], stored: Any, theirs: str, ours: str,
                         differences: list[str]) -> InputError:
    image = f"image {stored.id}"
    if stored.metadata_origin in INFERRED_ORIGINS:
        # Not corrected: this file has no manifest row, or the image is this submission's
        # own (the same bytes twice in it).
        how = ("were only inferred from its file name" if stored.metadata_origin == FROM_NAME
               else "were never given (it was read alone)")
        remedy = (f"If {image}'s are the wrong ones: they {how}, so a manifest row corrects "
                  "them. Submit this file again with its row (--manifest)"
                  + (" in a submission of its own" if row.get("metadata_origin") == FROM_MANIFEST
                     else "")
                  + f": {image} is re-registered with the row's values and scored again, its "
                  "earlier result kept as history.")
    else:
        remedy = (f"If {image}'s are the wrong ones, they cannot be changed: they were stated "
                  "(a DICOM header or a manifest row, or registered before this release told "
                  "stated values from inferred ones), and its result, and its exam's if it "
                  "has one, stand as read with them.")
    return InputError(
        f"Its bytes are already {image} ({theirs}), registered with other metadata than "
        f"this submission gives the file ({ours}): they differ in {', '.join(differences)}. "
        "A file without a DICOM UID is known by its bytes, and one file is one image, with "
        f"one laterality, view and exam: it is neither taken for a copy of {image} (whose "
        f"result was read with {image}'s metadata) nor scored again. If this submission's "
        f"values are the wrong ones, correct its manifest row to {image}'s (`mammo report "
        f"image {stored.id}` shows them) and submit the file again: it is then a copy of "
        f"{image}. {remedy}",
        code=ErrorCode.UID_CONFLICT)


def _split_repeats(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same image twice in one block (copied under two names): insert the first only."""
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    for row in rows:
        (repeats if row["identity"] in seen else kept).append(row)
        seen.add(row["identity"])
    return kept, repeats
