"""What a notification says, independent of the channel that carries it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Event(StrEnum):
    BATCH_COMPLETE = "batch_complete"
    # Also an image scored outside any exam (no study: a PNG without a manifest study_id,
    # a mini-MIAS file): read alone, it is alerted as an exam of its own ("image:9", its
    # payload's study_uid null and image_id set), so a receiver routing exam alerts gets it.
    EXAM_ALERT = "exam_alert"


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
    subject_key: str  # "batch:12", "study:7", "image:9": with channel and event, the unique key
    subject: str
    text: str
    payload: dict[str, Any]
    attachments: tuple[Attachment, ...] = field(default=())
    batch_id: int | None = None
    study_id: int | None = None
    image_id: int | None = None
