"""Which bits of each stored DICOM pixel value are the value: (0028,0101) Bits Stored and
(0028,0102) High Bit, within (0028,0100) Bits Allocated (PS3.5 8.1.1).

A value is held in Bits Stored bits ending at High Bit; the other bits of its allocated
word may hold anything (an overlay plane, in older files; noise) and are no part of it.
pydicom keeps the lowest Bits Stored bits whatever High Bit says. Here, from the decoded
words as written (pydicom's own masking turned off):

- High Bit = Bits Stored - 1, the layout every current IOD requires: the lowest Bits Stored
  bits, sign-extended where (0028,0103) Pixel Representation is 1; the bits above are
  ignored, as before, unless they carry the image on (below).
- High Bit above that (the older "top-aligned" layout: 12 bits in bits 4 to 15): the words
  are shifted down to bits High Bit - Bits Stored + 1 .. High Bit, with a note. Where every
  word already fits the lowest Bits Stored bits, High Bit is taken as wrong instead (the
  top-aligned reading would keep only a few bits of the image): read as before, with a note.
- A High Bit no layout allows (at or past Bits Allocated, below Bits Stored - 1): refused.
- Words that run past Bits Stored (read from the bit the value starts at) are told apart by
  continuity: where two neighbouring pixels' bits above the value differ, an overlay or
  noise there makes the full words jump (by a multiple of 2^Bits Stored) while the values
  (bits masked) stay close; an image whose header understates its depth is the other way
  round, continuous in full and jumping when masked. The first is read masked, as the
  standard says; the second is refused (``UnreadableImageError``), naming Bits Stored and
  the range found: either reading gives another image than the modality's (masked: bands
  where the values wrap; in full: a window, padding or rescale written for the stated depth
  applied to values it was not written for), so the export must be fixed, not guessed.
  Signed data (Pixel Representation 1, which MG and DX images never are) is read masked
  with a note instead: unsigned values under a signed header look just the same.

Only a minimum and maximum are computed on a file whose words fit its declared bits (every
real vendor file in ../shared/data); the continuity test looks at a sample of rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from shared.errors import UnreadableImageError

__all__ = ["SAMPLE_ROWS", "stored_values"]

# Rows the continuity test samples, evenly spaced (all of them in a smaller image).
SAMPLE_ROWS = 256
# Neighbour pairs, across the bits above the value, below which the evidence is too thin to
# call the image's depth understated: the words are then read masked, as the standard says.
_MIN_PAIRS = 16
# The note's key in ``DecodedImage.notes`` (and a prediction's ``input_notes``).
NOTE_KEY = "stored_bits"


def stored_values(raw: np.ndarray, ds: Dataset, path: Path,
                  notes: dict[str, str]) -> np.ndarray:
    """The pixel values in ``raw`` (decoded words as written, dtype as pydicom gives it for
    Bits Allocated and Pixel Representation) that Bits Stored and High Bit declare."""
    if not np.issubdtype(raw.dtype, np.integer):
        return raw
    allocated = int(ds.get("BitsAllocated") or raw.dtype.itemsize * 8)
    stored = int(ds.get("BitsStored") or allocated)
    high_bit = ds.get("HighBit")
    high = stored - 1 if high_bit is None or high_bit == "" else int(high_bit)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    word = raw.dtype.itemsize * 8
    if not 1 <= stored <= min(allocated, word):
        return raw  # pydicom refuses such a header before decoding; nothing to select
    if not stored - 1 <= high < allocated:
        raise UnreadableImageError(
            f"{path.name}: (0028,0102) High Bit is {high}, which no layout allows with "
            f"(0028,0101) Bits Stored {stored} and (0028,0100) Bits Allocated {allocated}: "
            f"the {stored} bits of a value end at High Bit, so it must be {stored - 1} to "
            f"{allocated - 1} ({stored - 1} in current DICOM). The header does not describe "
            "the pixels: export the image again.")
    low_range = _value_range(stored, signed)
    first, last = int(raw.min()), int(raw.max())
    shift = high - (stored - 1)
    if shift and low_range[0] <= first and last <= low_range[1]:
        # Every word fits the lowest Bits Stored bits: shifting would keep only the top
        # few bits of the image and drop the rest. High Bit is what is wrong.
        notes[NOTE_KEY] = (
            f"(0028,0102) High Bit {high} places the {stored}-bit values at bits {shift} to "
            f"{high}, but every stored value fits bits 0 to {stored - 1}: read from bits 0 "
            f"to {stored - 1}, as if High Bit were {stored - 1}")
        return raw
    wide = raw >> shift if shift else raw
    if shift:
        first, last = int(wide.min()), int(wide.max())
        notes[NOTE_KEY] = (
            f"(0028,0102) High Bit {high} with (0028,0101) Bits Stored {stored}: values read "
            f"from bits {shift} to {high} (the older top-aligned layout), the bits below "
            "ignored")
    if low_range[0] <= first and last <= low_range[1]:
        return wide
    masked = _low_bits(wide, stored, signed)
    if not _continues_above(wide, masked, stored):
        return masked  # an overlay or noise above the value: ignored, as the standard says
    declared = (f"the {low_range[0]:,} to {low_range[1]:,} that (0028,0101) Bits Stored "
                f"{stored}")
    if signed:
        # Unsigned values under a Pixel Representation of 1 look the same (they run on
        # past the signed top); MG and DX images are unsigned, so either way the header is
        # wrong. Read as declared, as before, and said.
        notes[NOTE_KEY] = (
            f"its pixel values run from {first:,} to {last:,}, smoothly past {declared} "
            "and (0028,0103) Pixel Representation 1 (signed) declare: the header misstates "
            f"the depth or the sign; read as declared (the lowest {stored} bits, signed), "
            "which may not be the modality's image. Check the export")
        return masked
    raise UnreadableImageError(
        f"{path.name}: its pixel values run from {first:,} to {last:,} "
        f"({last.bit_length()} bits), past {declared} declares, and the image runs on "
        "smoothly past that range: the header understates the bit depth. Keeping only the "
        f"declared {stored} bits, as the standard says, would give another image (bands "
        "where the values wrap), so it was not scored. Fix the export (Bits Stored and High "
        "Bit must describe the pixel data) and send the image again.")


def _value_range(stored: int, signed: bool) -> tuple[int, int]:
    """The lowest and highest value ``stored`` bits hold."""
    if signed:
        return -(1 << (stored - 1)), (1 << (stored - 1)) - 1
    return 0, (1 << stored) - 1


def _low_bits(words: np.ndarray, stored: int, signed: bool) -> np.ndarray:
    """The lowest ``stored`` bits of ``words``, sign-extended when signed (in its dtype)."""
    spare = words.dtype.itemsize * 8 - stored
    if not spare:
        return words
    unsigned = words.view(np.dtype(f"u{words.dtype.itemsize}"))
    kept = (unsigned << spare) if not signed else (unsigned << spare).view(words.dtype)
    return kept >> spare  # arithmetic on a signed dtype: sign-extended


def _continues_above(wide: np.ndarray, masked: np.ndarray, stored: int) -> bool:
    """Whether the image runs on past ``stored`` bits: across neighbouring pixels whose bits
    above the value differ, the full words are mostly closer than the masked values."""
    step = max(1, wide.shape[0] // SAMPLE_ROWS)
    full = wide[::step].astype(np.int64)
    kept = masked[::step].astype(np.int64)
    above = (full - kept) >> stored
    across = above[:, 1:] != above[:, :-1]
    pairs = int(np.count_nonzero(across))
    if pairs < _MIN_PAIRS:
        return False
    full_step = np.abs(np.diff(full, axis=1)[across])
    kept_step = np.abs(np.diff(kept, axis=1)[across])
    smooth = int(np.count_nonzero(full_step < kept_step))
    return smooth > pairs - smooth
