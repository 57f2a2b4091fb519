"""Enumerations converted once, at the edge; the database stores ``.value``."""

from __future__ import annotations

from enum import StrEnum


class ImageState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"

    @classmethod
    def terminal(cls) -> tuple[ImageState, ...]:
        return (cls.DONE, cls.FAILED)


class Label(StrEnum):
    NORMAL = "normal"
    BENIGN = "benign"
    MALIGNANT = "malignant"


CLASSES: tuple[Label, ...] = (Label.NORMAL, Label.BENIGN, Label.MALIGNANT)


class Laterality(StrEnum):
    LEFT = "L"
    RIGHT = "R"
    BOTH = "B"

    @classmethod
    def parse(cls, value: str | Laterality | None) -> Laterality | None:
        if value is None or isinstance(value, Laterality):
            return value
        text = str(value).strip().upper()
        aliases = {"L": cls.LEFT, "LEFT": cls.LEFT, "R": cls.RIGHT, "RIGHT": cls.RIGHT,
                   "B": cls.BOTH, "BOTH": cls.BOTH}
        return aliases.get(text)


class View(StrEnum):
    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"
    LMO = "LMO"
    XCCL = "XCCL"
    XCCM = "XCCM"
    FB = "FB"
    SIO = "SIO"
    AT = "AT"
    OTHER = "OTHER"

    @classmethod
    def parse(cls, value: str | View | None) -> View | None:
        if value is None or isinstance(value, View):
            return value
        text = str(value).strip().upper().replace(" ", "")
        if not text:
            return None
        try:
            return cls(text)
        except ValueError:
            return cls.OTHER


class Priority(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"

    @property
    def broker_priority(self) -> int:
        # Redis priority queues: a lower number is served first.
        return 0 if self is Priority.URGENT else 5


class ErrorCode(StrEnum):
    """Machine-readable reasons an image ended as ``failed``. Stable: other tools read them."""

    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    NOT_DICOM_OR_IMAGE = "not_dicom_or_image"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    NOT_MAMMOGRAPHY = "not_mammography"
    FOR_PROCESSING = "for_processing"
    TOO_LARGE = "too_large"
    EMPTY_IMAGE = "empty_image"
    UNEXPECTED_CHANNELS = "unexpected_channels"
    MISSING_PIXEL_DATA = "missing_pixel_data"
    MISSING_FILE = "missing_file"
    BAD_FILE_NAME = "bad_file_name"  # not valid UTF-8: the database cannot hold it
    NO_PSEUDONYM_KEY = "no_pseudonym_key"  # patient-identified DICOM, no MAMMO_PATIENT_ID_KEY
    UID_CONFLICT = "uid_conflict"  # its SOPInstanceUID names a different stored image
    POISON = "poison"  # killed its worker or timed out on every attempt
    INTERNAL = "internal_error"
