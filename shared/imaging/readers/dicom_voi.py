"""Which VOI transform of a DICOM header the reader applies, and how it is described.

Mirrors ``apply_voi_lut(prefer_lut=True)``: a VOI LUT Sequence item if any, else a window
centre/width with its VOI LUT Function. What pydicom would stumble on is settled here, not
left to fail as a Python error: a window written with a decimal comma ("2048,0") is read as
the number it means, LUT Data that reached us as bytes of VR UN (a LUT of 65,536 entries is
too long for US in explicit VR: pydicom itself writes it so) is read as OW would be, a VOI
LUT that cannot be applied as written (LUT Data shorter than its descriptor says, values its
entries cannot hold) or a window that is no number is passed over for the next one (or the
full range), and an unknown function is taken as LINEAR, the standard's default. Each is
said in the description, which the producer stores (``images.voi``). A window that parses
but is unusable (width below 1) is refused by ``refuse_unusable``, naming the element and
its value.

The LUT chosen is read into a table here and applied here (``apply``), as pydicom's
``apply_voi`` applies one: what was checked is what is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_windowing

from shared.errors import UnreadableImageError
from shared.imaging.readers.dicom_meta import decimal, quoted, text, values

# (0028,1056) VOI LUT Function's defined terms (PS3.3 C.11.2.1.3).
_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
# Bits per LUT entry pydicom applies (PS3.3 C.11.2.1.1: 8, or 10 to 16).
_LUT_BITS = frozenset({8, *range(10, 17)})
# The images.voi column holds 200 characters.
_DESCRIPTION_LIMIT = 200
# The Modality LUT's linear form, applied by pydicom when both are present.
_RESCALE = (("RescaleSlope", "(0028,1053) Rescale Slope"),
            ("RescaleIntercept", "(0028,1052) Rescale Intercept"))

__all__ = ["VoiChoice", "apply", "choose", "describe", "output_range", "read_rescale",
           "refuse_unusable"]


@dataclass(frozen=True)
class VoiChoice:
    """The VOI transform chosen: a LUT item, a window, or none (the full output range)."""

    kind: Literal["lut", "window", "none"]
    index: int = 0  # of the LUT item or window applied
    luts: int = 0  # items in the VOI LUT Sequence
    windows: int = 0  # centre/width pairs
    centre: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"
    label: str = ""  # the LUT Explanation or Window Center & Width Explanation
    notes: tuple[str, ...] = ()  # what was read leniently or passed over, and why
    # The LUT item's, as read by ``_read_lut``: its first input value mapped, its bits per
    # entry, and its entries (uint8 or uint16, one per entry its descriptor declares).
    first: int = 0
    bits: int = 0
    table: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Lut:
    """A VOI LUT item read: see ``VoiChoice``'s fields of the same names."""

    first: int
    bits: int
    table: np.ndarray
    note: str | None  # how its LUT Data was read, where that was lenient


def choose(ds: Dataset) -> VoiChoice:
    """The first usable VOI LUT item, else the first usable window, else none."""
    luts = ds.get("VOILUTSequence") or []
    centres, widths = values(ds.get("WindowCenter")), values(ds.get("WindowWidth"))
    windows = min(len(centres), len(widths))
    notes: list[str] = []
    little_endian = _little_endian(ds)
    for index, item in enumerate(luts):
        lut = _read_lut(item, little_endian)
        if isinstance(lut, _Lut):
            label = text(item, "LUTExplanation") or ""
            if lut.note:
                notes.append(f"VOI LUT {index + 1}: {lut.note}")
            return VoiChoice("lut", index, len(luts), windows, label=label, notes=tuple(notes),
                             first=lut.first, bits=lut.bits, table=lut.table)
        notes.append(f"VOI LUT {index + 1} not used: {lut}")
    base = VoiChoice("none", luts=len(luts), windows=windows)
    for index in range(windows):
        window = _window(ds, index, centres[index], widths[index], base, notes)
        if window is not None:
            return window
    return replace(base, notes=tuple(notes))


def _window(ds: Dataset, index: int, centre_text: str, width_text: str, base: VoiChoice,
            notes: list[str]) -> VoiChoice | None:
    """Window ``index`` as a choice, or None (with a note) when a value is no number."""
    read: list[float] = []
    for element, written in (("(0028,1050) Window Center", centre_text),
                             ("(0028,1051) Window Width", width_text)):
        number, comma = decimal(written)
        if number is None or not math.isfinite(number):
            notes.append(f"window {index + 1} not used: {element} {quoted(written)} is not a "
                         "number")
            return None
        if comma:
            notes.append(f"{element} {quoted(written)} read as {number:g} (decimal comma)")
        read.append(number)
    function = (text(ds, "VOILUTFunction") or "LINEAR").upper()
    if function not in _FUNCTIONS:
        notes.append(f"(0028,1056) VOI LUT Function {quoted(function)} is no defined term: "
                     "LINEAR applied, the standard's default")
        function = "LINEAR"
    explanations = values(ds.get("WindowCenterWidthExplanation"))
    return replace(base, kind="window", index=index, centre=read[0], width=read[1],
                   function=function,
                   label=explanations[index] if index < len(explanations) else "",
                   notes=tuple(notes))


def _little_endian(ds: Dataset) -> bool:
    """Whether the dataset's elements were read little-endian (what OW and UN bytes are in);
    little-endian where nothing says, as all but the retired Explicit VR Big Endian are."""
    little = ds.original_encoding[1]
    if little is None:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        little = syntax.is_little_endian if syntax and syntax.is_transfer_syntax else True
    return bool(little)


def _read_lut(item: Dataset, little_endian: bool) -> _Lut | str:
    """This VOI LUT item's table, or why it cannot be applied as written.

    LUT Data comes as numbers (VR US) or as bytes: OW, or UN where it was too long for US
    when written (pydicom leaves a UN value as read when it cannot be US). Bytes are 16-bit
    words in the dataset's byte order, as pydicom reads OW; with 8 bits per entry and one
    byte per entry (PS3.3 C.11.2.1.1: "8 bits allocated"), they are bytes.
    """
    descriptor = _descriptor(item)
    if isinstance(descriptor, str):
        return descriptor
    entries, first, bits = descriptor
    data = item.LUTData
    if isinstance(data, bytes):
        table, found = _lut_bytes(data, entries, bits, little_endian)
    else:
        written = [data] if isinstance(data, int) else list(data)
        if not all(isinstance(number, int) for number in written):
            return "(0028,3006) LUT Data is not a list of numbers"
        table, found = np.array(written[:entries], dtype=np.int64), len(written)
    if found < entries or table is None:
        return (f"(0028,3006) LUT Data holds {found:,} entries, {entries:,} declared by "
                "(0028,3002) LUT Descriptor")
    top = 255 if bits == 8 else 65535
    low, high = int(table.min()), int(table.max())
    if low < 0 or high > top:
        return (f"(0028,3006) LUT Data holds values from {low:,} to {high:,}; {bits} bits "
                f"per entry hold 0 to {top:,}")
    note = None
    if item["LUTData"].VR == "UN":
        width = "8-bit entries" if table.itemsize == 1 else "16-bit words"
        note = f"(0028,3006) LUT Data of VR UN read as {width}"
    return _Lut(first, bits, table.astype(np.uint8 if bits == 8 else np.uint16), note)


def _descriptor(item: Dataset) -> tuple[int, int, int] | str:
    """(entries, first input value mapped, bits per entry) of the item's LUT Descriptor, or
    why it has none that can be applied (LUT Data missing included)."""
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None:
        missing = "(0028,3002) LUT Descriptor" if descriptor is None else "(0028,3006) LUT Data"
        return f"it has no {missing}"
    numbers = values(descriptor)
    if len(numbers) != 3 or not all(n.lstrip("-").isdigit() for n in numbers):
        written = quoted("\\".join(numbers))
        return f"(0028,3002) LUT Descriptor {written} is not 3 numbers"
    entries, first, bits = int(numbers[0]) or 1 << 16, int(numbers[1]), int(numbers[2])
    if not 0 < entries <= 1 << 16:
        return (f"(0028,3002) LUT Descriptor declares {entries:,} entries; 1 to 65,536 are "
                "possible")
    if bits not in _LUT_BITS:
        return (f"(0028,3002) LUT Descriptor declares {bits} bits per entry; 8 or 10 to 16 "
                "are defined")
    return entries, first, bits


def _lut_bytes(data: bytes, entries: int, bits: int, little_endian: bool
               ) -> tuple[np.ndarray | None, int]:
    """(the table, None when too short; the entries found) from LUT Data bytes."""
    if bits == 8 and entries <= len(data) < 2 * entries:
        # One byte per entry, packed two to a word: swapped within each word big-endian.
        packed = np.frombuffer(data[:len(data) // 2 * 2], dtype=np.uint8)
        if not little_endian:
            packed = packed.reshape(-1, 2)[:, ::-1].ravel()
        return packed[:entries], len(packed)
    found = len(data) if bits == 8 and len(data) < entries else len(data) // 2
    if found < entries:
        return None, found
    return np.frombuffer(data, dtype="<u2" if little_endian else ">u2", count=entries), found


def refuse_unusable(choice: VoiChoice, path: Path) -> None:
    """Refuse a window whose width is no width, naming it (PS3.3 C.11.2.1.2)."""
    linear = choice.function == "LINEAR"
    usable = choice.width >= 1 if linear else choice.width > 0
    if choice.kind == "window" and not usable:
        rule = "of at least 1" if linear else "above 0"
        raise UnreadableImageError(
            f"{path.name} has an unusable window: (0028,1051) Window Width is "
            f"{choice.width:g}, and a {choice.function} window needs a width {rule} "
            "(PS3.3 C.11.2.1.2). Export the image again with a valid window.")


def describe(choice: VoiChoice) -> str | None:
    """What ``images.voi`` says: the transform applied, then what was passed over."""
    if choice.kind == "lut":
        chosen = f"VOI LUT {choice.index + 1} of {choice.luts}"
        chosen += f" ({choice.label})" if choice.label else ""
        if choice.windows:
            chosen += f"; {choice.windows} window(s) not used"
    elif choice.kind == "window":
        chosen = (f"window {choice.index + 1} of {choice.windows}: centre {choice.centre:g}, "
                  f"width {choice.width:g}, {choice.function}")
        chosen += f" ({choice.label})" if choice.label else ""
    elif choice.notes:
        chosen = "full range"
    else:
        return None
    return "; ".join((chosen, *choice.notes))[:_DESCRIPTION_LIMIT]


def apply(pixels: np.ndarray, ds: Dataset, choice: VoiChoice) -> np.ndarray:
    """``choice`` applied to Modality LUT output values, as pydicom applies it."""
    if choice.kind == "lut" and choice.table is not None:
        # As pydicom's apply_voi: values below the first mapped take the first entry, values
        # past the last the last.
        index = np.asarray(pixels, dtype=np.int64) - choice.first
        np.clip(index, 0, len(choice.table) - 1, out=index)
        return choice.table[index]
    if choice.kind != "window":
        return pixels
    # pydicom reads the window from the dataset: give it the values as read here.
    ds.WindowCenter, ds.WindowWidth = choice.centre, choice.width
    ds.VOILUTFunction = choice.function
    return apply_windowing(pixels, ds)


def read_rescale(ds: Dataset, path: Path) -> tuple[str, ...]:
    """Settle the rescale slope and intercept as numbers in ``ds``, where pydicom's Modality
    LUT and ``output_range`` read them; return notes on what was read leniently.

    Read as a window is: a decimal comma ("0,5") is the number it means. A value that is no
    number is refused, naming it: guessing it would change every displayed value. Nothing is
    read where pydicom applies no rescale (a Modality LUT Sequence, or either one absent).
    """
    if "ModalityLUTSequence" in ds or not all(keyword in ds for keyword, _ in _RESCALE):
        return ()
    notes: list[str] = []
    for keyword, element in _RESCALE:
        written = values(ds.get(keyword))
        number, comma = decimal(written[0]) if len(written) == 1 else (None, False)
        if number is None or not math.isfinite(number):
            found = quoted("\\".join(written)) if written else "empty"
            raise UnreadableImageError(
                f"{path.name} has an unusable rescale: {element} is {found}, not one number, "
                "so the stored values cannot be converted to display values. Export the "
                "image again.")
        if comma:
            notes.append(f"{element} {quoted(written[0])} read as {number:g} (decimal comma)")
        setattr(ds, keyword, number)
    return tuple(notes)


def output_range(ds: Dataset, choice: VoiChoice) -> tuple[float, float]:
    """The (lowest, highest) value the Modality+VOI chain can produce.

    Mirrors pydicom's own choice for windowing, so a full-width window maps onto the range.
    """
    if choice.kind == "lut":
        return 0.0, float(2**choice.bits - 1)
    modality_lut = ds.get("ModalityLUTSequence")
    if modality_lut:
        return 0.0, float(2 ** int(modality_lut[0].LUTDescriptor[2]) - 1)
    stored = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation") or 0) == 0:
        low, high = 0.0, float(2**stored - 1)
    else:
        low, high = float(-(2 ** (stored - 1))), float(2 ** (stored - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)
