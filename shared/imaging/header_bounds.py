"""Header values made to fit the database's columns, at the one place headers enter it.

Senders break the standard's value lengths: a 100-character UID, an 80-character accession
number, a study date written 2024-01-01. PostgreSQL refuses a value longer than its column,
and that refusal would abort the whole block of files being registered, good ones included.
So identifiers keep their start and get a digest of the whole (two long UIDs sharing their
first characters stay two images, two exams; so does an accession number, which keys an
exam without a StudyInstanceUID), free text is cut, and a date is kept only as the
eight digits of a DICOM date.

A NUL byte inside a value (pydicom drops the NULs that pad a value, not one within it:
Manufacturer "GE\\x00Med") is refused by PostgreSQL in any text value, which failed the
whole block too; ``storable`` writes it as text first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import fields, replace
from typing import Any

from shared.db.schema import Image, Study
from shared.imaging.types import ImageHeader

_DIGEST = 16
_SEPARATED_DATE = re.compile(r"(\d{4})[-./](\d{2})[-./](\d{2})")
_NUL = "\x00"


def storable(text: str) -> str:
    """``text`` as any database column takes it: each NUL written as the four characters
    ``\\x00``.

    PostgreSQL refuses a NUL in a text value (SQLite does not), and the refusal fails the
    whole statement: every file of the block, or the message of a failure. Escaped rather
    than dropped, so that UIDs differing by it ("1.2\\x003", "1.23") stay two images, and
    written as the ``\\xNN`` the product shows other control characters and undecodable
    file name bytes as (``without_control``, ``source_text``), not as U+FFFD, which a
    reader takes for a byte that was not valid text.
    """
    return text.replace(_NUL, "\\x00") if _NUL in text else text


def fitted_key(text: str, length: int, *, digest_of: str | None = None) -> str:
    """``text`` if it fits ``length``, else its start and a digest of ``digest_of`` (the
    whole text unless told), so that distinct long keys stay distinct."""
    if len(text) <= length:
        return text
    digest = hashlib.sha256((text if digest_of is None else digest_of).encode()).hexdigest()
    return f"{text[:length - _DIGEST - 1]}~{digest[:_DIGEST]}"


def study_date(value: str | None) -> str | None:
    """A DICOM date (YYYYMMDD); one written with separators is read as one; else None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit() and len(text) == 8:
        return text
    match = _SEPARATED_DATE.fullmatch(text)
    return "".join(match.groups()) if match else None


def bounded(header: ImageHeader) -> ImageHeader:
    """``header`` with every value that goes into a column storable and fitted to it."""
    header = _storable(header)
    sop = _key(header.sop_instance_uid, Image.sop_instance_uid)
    identity = f"sop:{sop}" if header.identity.startswith("sop:") and sop else header.identity
    return replace(
        header, identity=identity, sop_instance_uid=sop,
        study_instance_uid=_key(header.study_instance_uid, Study.study_uid),
        series_instance_uid=_key(header.series_instance_uid, Image.series_instance_uid),
        # An accession number keys an exam without a StudyInstanceUID: a digest, not a cut.
        accession_number=_key(header.accession_number, Study.accession_number),
        study_date=study_date(header.study_date),
        manufacturer=_cut(header.manufacturer, Image.manufacturer),
        manufacturer_model=_cut(header.manufacturer_model, Image.manufacturer_model),
        voi=_cut(header.voi, Image.voi))


def _storable(header: ImageHeader) -> ImageHeader:
    """Every text value of ``header`` through ``storable``: escaped before any is fitted, so
    the fitted value is the one stored (and a long UID's digest is of what is stored)."""
    texts: dict[str, Any] = {field.name: storable(value) for field in fields(header)
             if isinstance(value := getattr(header, field.name), str)}
    return replace(header, **texts, view_flags=tuple(map(storable, header.view_flags)))


def _length(column: Any) -> int:
    return int(column.property.columns[0].type.length)


def _key(value: str | None, column: Any) -> str | None:
    return fitted_key(value, _length(column)) if value else value


def _cut(value: str | None, column: Any) -> str | None:
    return value[:_length(column)] if value else value


def fitted_identity(identity: str) -> str:
    """A stored identity as ``bounded`` makes it today: a SQLite database, which never
    enforced column lengths nor refused a NUL, may hold ``sop:`` and a UID of over 64
    characters in full, or one with a NUL in it."""
    if identity.startswith("sop:"):
        uid = _key(storable(identity[len("sop:"):]), Image.sop_instance_uid)
        return f"sop:{uid}"
    return identity
