"""A DICOM header's text elements as plain text, and the identity values (PatientID,
AccessionNumber) that pseudonyms and exam keys are made from.

pydicom decodes a text element in the file's (0008,0005) Specific Character Set. Three
things it does are not what the product needs:

- Bytes not valid in that character set are decoded with U+FFFD replacement characters
  (pydicom's warning is silenced while reading: ``dicom._quiet_pydicom``), so different
  bytes read as the same text: under ISO_IR 192 the patient IDs ``ID\\xff\\xfe`` and
  ``ID\\xfa\\xfb`` both read "ID\ufffd\ufffd". Such text is shown as read, but a pseudonym
  or an exam key is made from its bytes (``identity``), and the worker notes it on the
  image (``identity_notes``): the exam's grouping rests on bytes nobody can read.
- With no character set declared (or the default repertoire, or a term pydicom does not
  know) it reads bytes as Latin-1; many senders write UTF-8 without declaring it, and
  "Müller" would read "MÃ¼ller": another patient than the same ID in a file that declares
  its set. Bytes that are valid UTF-8 are read as UTF-8 there, others as Latin-1 still
  (which keeps every byte).
- A multi-valued element is a ``MultiValue``, whose ``str()`` is a Python list's repr; the
  DICOM text form of a multi-value is its values joined by backslashes.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR

from shared.imaging.readers.messages import printable

__all__ = ["IDENTITY_NOTE", "IdentityValue", "identity", "identity_notes", "joined", "text"]

# What pydicom puts where bytes were not valid text in the character set it decoded with.
REPLACEMENT = "\ufffd"
# The key of a value read with replacement characters: U+FFFD, then its bytes in hex. Text
# read cleanly never holds U+FFFD (text that does is keyed by its bytes too), so the two
# kinds of key never meet, and two values' keys are equal only where their bytes are.
_BYTES_KEY = REPLACEMENT
# What a value's padding is made of, at either end (as ``str.strip`` and pydicom drop it).
_PADDING = b" \x00\t\n\r\x0b\x0c"
_UTF8 = convert_encodings("ISO_IR 192")
# The identity elements, as the note names them.
_IDENTITY = (("PatientID", "(0010,0020) Patient ID"),
             ("AccessionNumber", "(0008,0050) Accession Number"))
# The note's key in ``DecodedImage.notes`` (and a prediction's ``input_notes``).
IDENTITY_NOTE = "identity_charset"
# A declared character set is quoted in the note at most this long (the note is kept
# within the 200 characters a prediction's note may have: worker.decoding.NOTE_LIMIT).
_CHARSET_LIMIT = 24


@dataclass(frozen=True)
class IdentityValue:
    """A patient ID or accession number as read, and what keys it."""

    shown: str  # the text as read, U+FFFD where its bytes were not valid text
    key: str  # what a pseudonym or exam key is made from: ``shown`` when clean
    clean: bool  # read as text without replacement characters


def text(ds: Dataset, keyword: str) -> str | None:
    """The element's value as text (``joined``); None when absent or empty."""
    return joined(_value(ds, keyword)[0])


def joined(value: object) -> str | None:
    """A value as DICOM writes it: a multi-value's values joined by backslashes; stripped,
    None when empty."""
    if value is None:
        return None
    written = ("\\".join(str(v) for v in value) if isinstance(value, MultiValue | list | tuple)
               else str(value))
    return written.strip() or None


def identity(ds: Dataset, keyword: str) -> IdentityValue | None:
    """A patient ID or accession number: its text (``text``), and its key, which is the
    text where it was read cleanly, else made from its bytes (losslessly: U+FFFD, then the
    bytes in hex, padding left out). None when absent or empty."""
    value, raw = _value(ds, keyword)
    shown = joined(value)
    if shown is None:
        return None
    if REPLACEMENT not in shown:
        return IdentityValue(shown, shown, clean=True)
    # An element already converted (a dataset built in memory) keeps no bytes: its text's.
    data = raw.strip(_PADDING) if raw is not None else shown.encode("utf-8")
    return IdentityValue(shown, _BYTES_KEY + data.hex(), clean=False)


def identity_notes(ds: Dataset) -> dict[str, str]:
    """A note when the patient ID or accession number was not valid text in the file's
    character set: told apart by their bytes, the exam's images may still be grouped
    otherwise than the sender meant."""
    unclear = [name for keyword, name in _IDENTITY
               if (value := identity(ds, keyword)) is not None and not value.clean]
    if not unclear:
        return {}
    declared = joined(ds.get("SpecificCharacterSet"))
    charset = f"'{printable(declared)[:_CHARSET_LIMIT]}'" if declared else "none declared"
    one = len(unclear) == 1
    return {IDENTITY_NOTE: (
        f"{' and '.join(unclear)} {'is' if one else 'are'} not valid in the file's "
        f"character set, {charset}: the exam is grouped by {'its' if one else 'their'} "
        "bytes; check it holds one patient's images")}


def _value(ds: Dataset, keyword: str) -> tuple[object, bytes | None]:
    """(the element's value, its bytes as read, or None once converted), without changing
    ``ds``: converted as pydicom converts it, but for valid UTF-8 where no character set
    says otherwise (see the module's docstring)."""
    tag = tag_for_keyword(keyword)
    element = ds.get_item(tag) if tag is not None else None
    if element is None:
        return None, None
    if not isinstance(element, RawDataElement):
        return element.value, None
    raw = element.value if isinstance(element.value, bytes) else None
    # pydicom's own choice (Dataset.__getitem__), the Latin-1 default for no declared set.
    encodings = ds.original_character_set or ds._character_set
    if raw is not None and _default_repertoire(encodings) and _utf8_text(raw, element):
        encodings = _UTF8
    return convert_raw_data_element(element, encoding=encodings, ds=ds).value, raw


def _default_repertoire(encodings: str | MutableSequence[str]) -> bool:
    listed = [encodings] if isinstance(encodings, str) else list(encodings)
    return all(encoding == default_encoding for encoding in listed)


def _utf8_text(raw: bytes, element: RawDataElement) -> bool:
    """Whether ``raw`` is a text element's value that is not ASCII but is valid UTF-8."""
    if raw.isascii():
        return False  # reads alike either way
    try:
        vr = element.VR or dictionary_VR(element.tag)
        raw.decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return False
    return vr in CUSTOMIZABLE_CHARSET_VR
