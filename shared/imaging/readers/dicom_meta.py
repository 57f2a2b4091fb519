"""What a mammography DICOM header says about the image, as plain values.

Each function reads a few elements of a pydicom ``Dataset`` (read without pixels) and
returns an enum, a number or a short text. Kept apart from the triage rules
(``dicom_checks``) and from decoding (``dicom``): these never refuse a file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from shared.enums import Laterality, View
from shared.imaging.readers import dicom_text
from shared.imaging.readers.messages import printable

# View for Mammography (DICOM CID 4014), by SNOMED-RT (SRT/SNM3) and SNOMED CT code.
_VIEW_CODES = {
    "R-10242": View.CC, "399162004": View.CC,
    "R-10226": View.MLO, "399368009": View.MLO,
    "R-10224": View.ML, "399260004": View.ML,
    "R-10228": View.LM, "399352003": View.LM,
    "R-10230": View.LMO, "399099002": View.LMO,
    "R-1024A": View.XCCL, "399192008": View.XCCL,
    "R-1024B": View.XCCM, "399101009": View.XCCM,
    "R-10244": View.FB, "399196006": View.FB,
    "R-102D0": View.SIO, "399188001": View.SIO,
}
# CID 4014's "tissue specimen from breast" (SNOMED CT, SNOMED-RT): an excised specimen
# radiographed to check its margins, not a breast; matched by meaning too ("specimen").
_SPECIMEN_CODES = frozenset({"127457009", "G-8310"})
# The same views by Code Meaning, for files that use another coding scheme, and by a View
# Position that spells the view out; compared squeezed (see ``_squeezed``), so case, hyphens
# and spaces do not matter ("Mediolateral Oblique", "MEDIO-LATERAL OBLIQUE").
_VIEW_MEANINGS = {
    "craniocaudal": View.CC, "mediolateraloblique": View.MLO, "mediolateral": View.ML,
    "lateromedial": View.LM, "lateromedialoblique": View.LMO,
    "craniocaudalexaggeratedlaterally": View.XCCL,
    "craniocaudalexaggeratedmedially": View.XCCM,
    "caudocranialfrombelow": View.FB,
    "superolateraltoinferomedialoblique": View.SIO,
}
# View Modifier (CID 4015) meanings that change what the image shows, as stored flags.
_MODIFIER_FLAGS = {
    "spot compression": "spot_compression", "magnification": "magnification",
    "magnified": "magnification", "implant displaced": "implant_displaced",
    "rolled laterally": "rolled", "rolled medially": "rolled", "rolled superior": "rolled",
    "rolled inferior": "rolled", "tangential": "tangential", "cleavage": "cleavage",
    "axillary tissue": "axillary", "nipple in profile": "nipple_in_profile",
}
# A contact mammogram is magnified about 1.1x by geometry; a magnification view 1.5-2x.
_MAGNIFICATION_FACTOR = 1.3
# A comma that may be a thousands separator ("2,048") rather than a decimal comma.
_GROUPED_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2},\d{3}")
# What a View Position may separate its words with ("R MLO", "R-MLO", "MEDIO-LATERAL").
_SEPARATORS = re.compile(r"[\s\-_()]+")
# Header values are quoted in notes at most this long (the notes go to a 200-character column).
_QUOTE_LIMIT = 20
# The letters (0020,0020) Patient Orientation's values are made of (PS3.3 C.7.6.1.1.1):
# anterior, posterior, right, left, head, feet.
_DIRECTIONS = frozenset("APRLHF")

__all__ = [
    "ColumnReading", "SpacingReading", "burned_in_annotation", "chest_wall_side",
    "column_reading", "decimal", "implant_present", "inverted", "laterality",
    "laterality_reading", "quoted", "score_notes", "spacing_reading",
    "specimen_view", "text", "values", "view", "view_conflict", "view_flags",
]


# An element's value as text: a multi-value joined by backslashes, UTF-8 read as such where
# no character set is declared (``dicom_text``).
text = dicom_text.text
_stripped = dicom_text.joined


def laterality(ds: Dataset) -> Laterality | None:
    """(0020,0062) Image Laterality, else the series' (0020,0060) Laterality, else the
    (0020,9072) Frame Laterality of the functional groups, where enhanced and breast
    projection X-ray objects keep it instead of the top-level attributes; else the breast's
    letter written before the view in (0018,5101) View Position ("RMLO")."""
    side = Laterality.parse(
        text(ds, "ImageLaterality") or text(ds, "Laterality")
        or _stripped(_in_groups(ds, "FrameAnatomySequence", "FrameLaterality")))
    return side if side is not None else _view_position(ds).side


def laterality_reading(ds: Dataset) -> str | None:
    """A note when the laterality used (``laterality``) was read from a value that is not
    a defined term of its element (L, R, B): written in lower case (``l``) or spelt out
    (``LEFT``), as some senders do. Read leniently, as a decimal comma is, and said so."""
    for element, value in _written_lateralities(ds):
        if value:  # the first element written is the one ``laterality`` reads
            side = Laterality.parse(value)
            if side is None or value == side.value:
                return None
            return f"{element} {quoted(value)} read as {side}"
    return None


def _written_lateralities(ds: Dataset) -> tuple[tuple[str, str | None], ...]:
    """(element, its value as text) for each laterality element, in the order
    ``laterality`` prefers them."""
    return (("(0020,0062) Image Laterality", text(ds, "ImageLaterality")),
            ("(0020,0060) Laterality", text(ds, "Laterality")),
            ("(0020,9072) Frame Laterality",
             _stripped(_in_groups(ds, "FrameAnatomySequence", "FrameLaterality"))))


def _stated_lateralities(ds: Dataset) -> list[tuple[str, Laterality]]:
    """(element, laterality) for each element that names one, in the order ``laterality``
    prefers them."""
    stated = [(element, side) for element, value in _written_lateralities(ds)
              if (side := Laterality.parse(value)) is not None]
    position = _view_position(ds)
    if position.side is not None:
        stated.append((f"(0018,5101) View Position {quoted(text(ds, 'ViewPosition'))}",
                       position.side))
    return stated


def laterality_conflict(ds: Dataset) -> str | None:
    """A note when the header's laterality elements disagree: the first is used (see
    ``laterality``), and a reader should know the other said otherwise."""
    stated = _stated_lateralities(ds)
    if len({side for _, side in stated}) < 2:
        return None
    (used_element, used), *others = stated
    against = ", ".join(f"{element} says {side}" for element, side in others if side != used)
    return (f"{used_element} says {used}, but {against}: check the laterality; scored as "
            f"{used}")


def view_conflict(ds: Dataset) -> str | None:
    """A note when (0018,5101) View Position and the first (0054,0220) View Code Sequence
    item name two different known views: the View Position is used (see ``view``)."""
    position = _view_position(ds).view
    coded = _coded_view(ds)
    if position is None or coded in (None, View.OTHER) or coded == position:
        return None
    value = text(ds, "ViewPosition") or ""
    written = "" if _squeezed(value).upper() == position else f" {quoted(value)}"
    return (f"(0018,5101) View Position{written} says {position}, but (0054,0220) View "
            f"Code Sequence says {coded}: check the view; read as {position}")


def implant_present(ds: Dataset) -> bool | None:
    """(0028,1300) Breast Implant Present: YES, NO, or None when absent or another value."""
    return _yes_no(ds, "BreastImplantPresent")


def score_notes(ds: Dataset) -> dict[str, str]:
    """Notes on what the header says that puts the score itself, or the breast and view
    the exam files it under, or the exam itself, in doubt, by kind."""
    notes: dict[str, str] = {}
    if implant_present(ds):
        notes["implant"] = (
            "(0028,1300) Breast Implant Present is YES: the model was not trained on breasts "
            "with implants (mini-MIAS has none); read this view without relying on its score")
    conflict = laterality_conflict(ds)
    if conflict is not None:
        notes["laterality_conflict"] = conflict
    views = view_conflict(ds)
    if views is not None:
        notes["view_conflict"] = views
    # A patient ID or accession number keyed by its bytes: is the exam one patient's?
    notes.update(dicom_text.identity_notes(ds))
    return notes


def view(ds: Dataset) -> View | None:
    """(0018,5101) View Position when it names a known view, else the first (0054,0220) View
    Code Sequence item, else OTHER for a View Position that names none, else a view name
    misfiled as the only value of (0020,0020) Patient Orientation."""
    position = _view_position(ds).view
    if position is not None:
        return position
    coded = _coded_view(ds)
    if coded is not None:
        return coded
    if text(ds, "ViewPosition"):
        return View.OTHER
    return _view_in_orientation(ds)


def _coded_view(ds: Dataset) -> View | None:
    """The view the first View Code Sequence item names by code or meaning; OTHER for one
    naming none; None without the sequence."""
    item = _first(ds, "ViewCodeSequence")
    if item is None:
        return None
    code = str(item.get("CodeValue", "")).strip()
    meaning = _squeezed(str(item.get("CodeMeaning", "")))
    return _VIEW_CODES.get(code) or _VIEW_MEANINGS.get(meaning) or View.OTHER


def _squeezed(value: str) -> str:
    """A view's name or meaning lower-cased without spaces, hyphens, underscores and
    brackets, the forms vendors write it in compared as one."""
    return _SEPARATORS.sub("", value).lower()


@dataclass(frozen=True)
class _Position:
    view: View | None = None  # a known view, or None
    implant_displaced: bool = False
    side: Laterality | None = None  # the breast's letter written before the view


def _view_position(ds: Dataset) -> _Position:
    """(0018,5101) View Position, read as ACR MQCM labels are written: a view, optionally
    prefixed by the breast's letter ("RMLO", "LCC") and suffixed by ID for implant
    displaced ("CCID"), or the view spelt out ("MEDIOLATERAL OBLIQUE"). The value read
    whole comes first, so "LM" stays latero-medial; the letter is the breast's only when
    the rest names a known view. Whether the letter agrees with the laterality elements is
    ``laterality_conflict``'s business, not this reading's. No view when the value names
    none."""
    value = _squeezed(text(ds, "ViewPosition") or "").upper()
    readings: list[tuple[str, Laterality | None]] = [(value, None)]
    if value[:1] in ("L", "R"):
        readings.append((value[1:], Laterality.parse(value[0])))
    for name, side in readings:
        for implant_displaced in (False, True):
            if implant_displaced and not name.endswith("ID"):
                continue
            shown = name.removesuffix("ID") if implant_displaced else name
            parsed = View.parse(shown)
            if parsed in (None, View.OTHER):
                parsed = _VIEW_MEANINGS.get(shown.lower())
            if parsed is not None and parsed is not View.OTHER:
                return _Position(parsed, implant_displaced, side)
    return _Position()


def specimen_view(ds: Dataset) -> str | None:
    """The first View Code Sequence item, quoted, when it says the image is of a specimen."""
    item = _first(ds, "ViewCodeSequence")
    if item is None:
        return None
    code = str(item.get("CodeValue", "")).strip()
    meaning = str(item.get("CodeMeaning", "")).strip()
    if code in _SPECIMEN_CODES or "specimen" in meaning.lower():
        return f"'{meaning or code}' ({code or 'no code value'})"
    return None


def _view_in_orientation(ds: Dataset) -> View | None:
    """CBIS-DDSM, the most used public mammography set, and some film digitisers store the
    view ("CC", "MLO") as a single Patient Orientation value. A real orientation has two
    values built from A, P, R, L, H and F, so a single value naming a view cannot be one."""
    value = ds.get("PatientOrientation")
    if not isinstance(value, str):
        return None
    parsed = View.parse(value)
    return None if parsed is View.OTHER else parsed


def view_flags(ds: Dataset) -> tuple[str, ...]:
    """Sorted flags for views that are not standard screening views (spot, magnification).

    From the View Modifier Code Sequence (inside the View Code Sequence), an ID suffix on the
    View Position ("CCID"), the paddle, the estimated magnification factor, and a
    stereotactic Image Type.
    """
    flags: set[str] = set()
    if _view_position(ds).implant_displaced:
        flags.add("implant_displaced")
    item = _first(ds, "ViewCodeSequence")
    for modifier in (item.get("ViewModifierCodeSequence") or []) if item is not None else []:
        meaning = str(modifier.get("CodeMeaning", "")).strip().lower()
        flags.add(_MODIFIER_FLAGS.get(meaning, meaning.replace(" ", "_")[:24] or "modifier"))
    paddle = (text(ds, "PaddleDescription") or "").upper()
    if "SPOT" in paddle:
        flags.add("spot_compression")
    if "MAG" in paddle:
        flags.add("magnification")
    factor = ds.get("EstimatedRadiographicMagnificationFactor")
    if factor is not None and _number(factor) >= _MAGNIFICATION_FACTOR:
        flags.add("magnification")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "STEREO" in image_type:
        flags.add("stereotactic")
    return tuple(sorted(flags))


@dataclass(frozen=True)
class SpacingReading:
    """The pixel spacing a header states, where it was read, and what was passed over."""

    mm: tuple[float, float] | None = None  # (row, column)
    element: str = ""  # the element it was read from, tag and name
    notes: tuple[str, ...] = ()


def spacing_reading(ds: Dataset) -> SpacingReading:
    """(row, column) spacing in mm: Imager Pixel Spacing first, then Pixel Spacing, then the
    Pixel Spacing of the functional groups' Pixel Measures (enhanced and breast projection
    X-ray objects).

    The detector-plane spacing comes first because every vendor fills it the same way;
    Pixel Spacing (calibrated at the breast) is present on only some and would make images
    of one detector scale differently by vendor. A value that is not two positive numbers
    (zero, negative, NaN, text) states no spacing: the next element is tried, with a note.
    One value is taken as square pixels, as a manifest's is.
    """
    notes: list[str] = []
    for element, value in (
            ("(0018,1164) Imager Pixel Spacing", ds.get("ImagerPixelSpacing")),
            ("(0028,0030) Pixel Spacing", ds.get("PixelSpacing")),
            ("(0028,0030) Pixel Spacing of the Pixel Measures",
             _in_groups(ds, "PixelMeasuresSequence", "PixelSpacing"))):
        written = values(value)
        if not written:
            continue
        numbers = [decimal(v) for v in written]
        sizes = [number for number, _ in numbers if number is not None]
        shown = quoted("\\".join(written))
        if len(written) > 2 or len(sizes) < len(written) or not all(
                0 < size < math.inf for size in sizes):
            notes.append(f"{element} {shown} is not two positive numbers: not used")
            continue
        if any(comma for _, comma in numbers):
            notes.append(f"{element} {shown} read with a decimal comma")
        if len(sizes) == 1:
            notes.append(f"{element} holds one value: taken as square pixels")
        return SpacingReading((sizes[0], sizes[-1]), element, tuple(notes))
    return SpacingReading(notes=tuple(notes))


def decimal(value: object) -> tuple[float | None, bool]:
    """A decimal string (DS) value as a number, and whether it was written with a decimal
    comma ("2048,0", "0,070": software formatting numbers in a European locale). None when
    it is no number, or when its comma may separate thousands ("2,048") instead."""
    if isinstance(value, int | float):
        return float(value), False
    written = str(value).strip()
    try:
        return float(written), False
    except ValueError:
        pass
    if written.count(",") != 1 or "." in written or _GROUPED_THOUSANDS.fullmatch(written):
        return None, False
    try:
        return float(written.replace(",", ".")), True
    except ValueError:
        return None, False


def quoted(value: object) -> str:
    """A header value for a note or message, quoted and cut short, control characters (a
    value of binary garbage) written "?": notes and messages are read by people."""
    written = printable(str(value).strip())
    return f"'{written}'" if len(written) <= _QUOTE_LIMIT else f"'{written[:_QUOTE_LIMIT]}...'"


def chest_wall_side(ds: Dataset) -> Literal["left", "right"] | None:
    """Where the chest wall is in the stored pixels, from (0020,0020) Patient Orientation.

    Its first value is the direction of increasing column: towards Anterior (the nipple)
    puts the chest wall on the left, towards Posterior on the right. Anything else (a CC
    stored as "R\\P" for a biopsy) says nothing about it.
    """
    value = ds.get("PatientOrientation")
    if not value or isinstance(value, str):
        return None
    row_direction = str(value[0]).upper()
    if "A" in row_direction and "P" not in row_direction:
        return "left"
    if "P" in row_direction and "A" not in row_direction:
        return "right"
    return None


@dataclass(frozen=True)
class ColumnReading:
    """What (0020,0020) Patient Orientation's second value says about which way up the
    stored pixels are, and a note for a person where it was turned or could not be read."""

    upside_down: bool = False
    note: str | None = None


def column_reading(ds: Dataset) -> ColumnReading:
    """Whether the stored pixels are upside down, from (0020,0020) Patient Orientation.

    Its second value is the direction of increasing row (down the image). A mammogram is
    hung with the head up: F (feet) for an MLO, L or R for a CC; a value towards the head
    (H, without F: "HR", "H") means the breast was stored upside down, and the model, which
    learnt on upright films, would score it so. A value naming both H and F, or a letter
    that is no direction, is not read: the pixels are left as stored, with a note. Absent,
    single-valued (CBIS-DDSM's "CC") or without H, it says nothing and nothing is noted.
    """
    value = ds.get("PatientOrientation")
    if not value or isinstance(value, str | bytes):
        return ColumnReading()
    written = values(value)
    down = written[1].upper() if len(written) > 1 else ""
    if "H" not in down and set(down) <= _DIRECTIONS:
        return ColumnReading()
    shown = "(0020,0020) Patient Orientation " + quoted("\\".join(written))
    if not set(down) <= _DIRECTIONS:
        return ColumnReading(note=f"{shown}: its second value is not made of A, P, R, L, "
                                  "H and F; shown as stored, not turned")
    if "F" in down:
        return ColumnReading(note=f"{shown}: its second value names both head (H) and feet "
                                  "(F); shown as stored, not turned")
    return ColumnReading(True, f"stored upside down ({shown}): turned the right way up for "
                               "scoring and display")


def inverted(ds: Dataset) -> bool:
    """Whether the display shows high values dark, by the DICOM grayscale pipeline.

    MONOCHROME1 always is; its (2050,0020) Presentation LUT Shape INVERSE is how DX and MG
    images state that, not a second inversion. MONOCHROME2 is under INVERSE, or under a
    (2050,0010) Presentation LUT Sequence whose table descends (only its direction is
    applied: such tables are near-linear, and our contrast stretch redoes the curve).
    """
    if text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        return True
    shape = (text(ds, "PresentationLUTShape") or "").upper()
    if shape:
        return shape == "INVERSE"
    table = _first(ds, "PresentationLUTSequence")
    data = table.get("LUTData") if table is not None else None
    if data is None:
        return False
    if isinstance(data, bytes):  # OW: 16-bit entries, little-endian as we decode
        data = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2")
    values = np.asarray(data, dtype=np.int64).ravel()
    return values.size > 1 and int(values[0]) > int(values[-1])


def burned_in_annotation(ds: Dataset) -> bool | None:
    return _yes_no(ds, "BurnedInAnnotation")


def _yes_no(ds: Dataset, keyword: str) -> bool | None:
    value = (text(ds, keyword) or "").upper()
    return {"YES": True, "NO": False}.get(value)


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if sequence is not None and len(sequence) else None


def _in_groups(ds: Dataset, group: str, keyword: str) -> Any:  # a pydicom value
    """``keyword`` inside the ``group`` macro of the functional groups: the shared groups
    first (they hold what every frame has in common), then the first frame's."""
    for functional_groups in ("SharedFunctionalGroupsSequence",
                              "PerFrameFunctionalGroupsSequence"):
        frame = _first(ds, functional_groups)
        item = _first(frame, group) if frame is not None else None
        if item is not None and item.get(keyword) is not None:
            return item.get(keyword)
    return None


def values(value: object) -> list[str]:
    """A (possibly multi-valued) element's values as stripped strings; [] when empty."""
    if value is None or value == "":
        return []
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return [str(value).strip()]
    return [str(v).strip() for v in value]


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
