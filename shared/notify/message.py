"""What a notification says, independent of the channel that carries it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.timeutil import as_utc


class Event(StrEnum):
    BATCH_COMPLETE = "batch_complete"
    # Also an image scored outside any exam (no study: a PNG without a manifest study_id,
    # a mini-MIAS file): read alone, it is alerted as an exam of its own ("image:9", its
    # payload's study_uid null and image_id set), so a receiver routing exam alerts gets it.
    EXAM_ALERT = "exam_alert"


# Hex digits of the digest in a delivery key: 96 bits, past any chance collision.
_DIGEST_HEX = 24


def delivery_key(kind: str, *identity: str | int | datetime | None) -> str:
    """``kind:<digest>``, what a receiver de-duplicates an event's deliveries by.

    Built from what identifies the subject for good (a study's UID and the instant its row
    was made, a batch's name and creation time), never from database ids alone: a database
    restored from a backup gives the next exam the id of one registered after the backup,
    and two sites' databases posting to one receiver both have a study 14. Keyed by the id,
    a receiver that refuses ids it has seen (as the README asks) dropped the second
    patient's alert as a duplicate of the first. A digest, not the values: receivers log
    delivery ids, and a batch name or a study key may hold what identifies a patient.
    """
    parts = [kind, *(_canonical(value) for value in identity)]
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:_DIGEST_HEX]
    return f"{kind}:{digest}"


def _canonical(value: str | int | datetime | None) -> str:
    """One text per value whatever the database: SQLite hands times back naive, PostgreSQL
    aware in its session's zone; both mean the same UTC instant."""
    if isinstance(value, datetime):
        return as_utc(value).isoformat(timespec="microseconds")
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: str
    subtype: str = "html"  # text/<subtype>


@dataclass(frozen=True)
class Notice:
    """One notification: a subject and plain text for people, a payload for machines.

    Content rule: identifiers are the study UID, accession number and patient pseudonym only;
    nothing else from the DICOM header (no name, no raw PatientID, no birth date).
    """

    event: Event
    # "batch:12", "study:7", "image:9": with channel and event, the unique key of the
    # notifications row, within this database only (ids are reused after a restore).
    subject_key: str
    subject: str
    text: str
    payload: dict[str, Any]
    attachments: tuple[Attachment, ...] = field(default=())
    batch_id: int | None = None
    study_id: int | None = None
    image_id: int | None = None
    # ``delivery_key(...)``: the same for every attempt and re-send of this event about this
    # subject, never shared by another exam, image or batch, whichever database sent it.
    delivery_key: str = field(kw_only=True)

    @property
    def delivery_id(self) -> str:
        """What the webhook body's ``delivery`` says: "exam_alert:study:3f2a...", per event."""
        return f"{self.event.value}:{self.delivery_key}"
