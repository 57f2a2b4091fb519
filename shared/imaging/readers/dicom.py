"""DICOM Part 10 files, read by pydicom: triage on the header, then decode and apply LUTs.

Pixels come out after the Modality LUT (rescale) and the VOI LUT or window, i.e. as a
radiologist would see them, shifted so the darkest possible output is 0: ``max_value`` is
the width of the VOI output range, not of the stored bits. MONOCHROME1 (high values dark) is
NOT inverted here; ``DecodedImage.invert`` is set and preprocessing inverts it (as for
MONOCHROME2 under an INVERSE Presentation LUT: ``dicom_meta.inverted``). Which bits of each
decoded word are the value is read from Bits Stored and High Bit (``dicom_bits``), not left
to pydicom, which keeps the lowest Bits Stored bits whatever High Bit says. An image the
header itself blanks (a window outside its values, padding over every pixel) is refused
naming the window or padding, where preprocessing could only call it blank.

Patient-identifying elements are never read into an ``ImageHeader`` and never appear in a
message: PatientID is read only to be turned into a keyed pseudonym at once (and a file that
carries one is refused when no key is configured). pydicom's own error texts are safe to
repeat because we never ask it to convert patient elements; they are repeated short and
printable (``messages.summary``): a byte string from the file a library quotes (int() of LUT
Data, say) is never dumped into a person's message, and the error in full goes to the log.

Before any plugin decodes a compressed frame, what its codestream declares (``dicom_codestream``:
a few bytes of its first fragment) is held to the header: a decoder allocates for the size the
codestream declares, so a frame declaring more than (0028,0010) Rows x (0028,0011) Columns is
refused before it can take the worker's memory (``_check_frame_header``).

Decoding plugins are chosen per transfer syntax and passed explicitly (pydicom would try GDCM
first everywhere): GDCM (BSD) for the JPEG family, pyjpegls (MIT) for JPEG-LS, pylibjpeg with
pylibjpeg-openjpeg (MIT) for JPEG 2000. pylibjpeg-libjpeg (GPL-3.0) is never preferred; it
is used only when it is the one decoder installed for a syntax. 12-bit JPEG Extended, which
no plugin accepts, goes to GDCM's own reader (``gdcm_direct``).
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEGExtended12Bit

from shared.errors import (
    EmptyImageError,
    ImageTooLargeError,
    InputError,
    PseudonymKeyMissingError,
    UnreadableImageError,
    UnsupportedCompressionError,
)
from shared.imaging.preprocess import MIN_CONTRAST
from shared.imaging.readers import dicom_bits as bits
from shared.imaging.readers import dicom_checks as checks
from shared.imaging.readers import dicom_codestream as codestream
from shared.imaging.readers import dicom_deflate as deflate
from shared.imaging.readers import dicom_meta as meta
from shared.imaging.readers import dicom_text, gdcm_direct
from shared.imaging.readers import dicom_voi as voi
from shared.imaging.readers.base import (
    Pseudonymize,
    check_pixel_count,
    host_fault,
    open_error,
    sha256_identity,
)
from shared.imaging.readers.messages import LOG_LIMIT
from shared.imaging.readers.messages import summary as _summary
from shared.imaging.readers.raster import to_grayscale
from shared.imaging.types import DecodedImage, ImageHeader
from shared.pseudonym import KEY_HINT

# pydicom logs each value-validation warning as well as warning it (misc.warn_and_log), and
# the log line can quote the element's value ("Invalid value for VR DA: '1961-03-02'"): a
# date or a name from a patient's header in our logs, about nothing we act on. The warnings
# themselves are silenced while reading (_quiet_pydicom); pydicom's errors still log.
logging.getLogger("pydicom").setLevel(logging.ERROR)
log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Only these are parsed for the producer. PatientID is hashed at once, never kept.
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "AccessionNumber", "StudyDate", "ImageLaterality", "Laterality", "ViewPosition",
    "ViewCodeSequence", "PatientOrientation", "Rows", "Columns", "Manufacturer",
    "ManufacturerModelName", "ImagerPixelSpacing", "PixelSpacing", "BurnedInAnnotation",
    "PaddleDescription", "EstimatedRadiographicMagnificationFactor", "ImageType",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
    "VOILUTSequence", "PatientID",
    # Enhanced and breast projection X-ray objects: laterality and spacing may be only here.
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]
_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
# Fastest permissive plugin first, per syntax (tests/benchmarks/decode.py measures them).
PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    **{uid: ("gdcm", "pillow") for uid in _JPEG},
    **{uid: ("pyjpegls", "gdcm") for uid in _JPEG_LS},
    **{uid: ("pylibjpeg", "pillow", "gdcm") for uid in _J2K},
    "1.2.840.10008.1.2.5": ("pylibjpeg", "gdcm", "pydicom"),  # RLE Lossless
}
# A deflated dataset may inflate to this much beside its pixel data (its header elements,
# and anything after the pixels). Generous: vendors keep overlays, ICC profiles and private
# previews there, megabytes at most; a decompression bomb is stopped here at the latest.
HEADER_INFLATE_LIMIT = 64 << 20
# The widest pixel pydicom decodes (one 64-bit sample): a header declaring more cannot raise
# the inflation cap past what the pixel limit allows.
_WIDEST_PIXEL_BYTES = 8
# This project's top-level packages: an attribute missing from their classes and objects is
# a fault of this code (see _software_fault).
_OWN_PACKAGES = frozenset({"shared", "worker", "producer", "models"})
# How much of a frame's first fragment is looked at for its codestream's header first (a
# JPEG's tables and application segments come before its frame header): the rest of it, then
# the whole frame, only where the header runs on past this.
_HEADER_BYTES = 1 << 16
# An item of encapsulated pixel data opens with the Item tag (FFFE,E000), little-endian.
_ITEM_TAG = b"\xfe\xff\x00\xe0"


@dataclass(frozen=True)
class _InflateCap:
    """How many bytes a deflated dataset may inflate to, and why, for the refusal."""

    size: int
    allows: str  # "more than ...": what the cap is made of


_BESIDES_PIXELS = "more than its elements besides the pixels may take"


class DicomReader:
    format_name = "dicom"

    def __init__(self, *, header_inflate_limit: int = HEADER_INFLATE_LIMIT) -> None:
        self.header_cap = _InflateCap(header_inflate_limit, _BESIDES_PIXELS)

    def sniff(self, head: bytes) -> bool:
        # Part 10: a 128-byte preamble then "DICM", whatever the file is called.
        return head[128:132] == b"DICM" or _raw_dataset(head)

    def read_header(self, path: Path, *, pseudonymize: Pseudonymize | None = None
                    ) -> ImageHeader:
        with _quiet_pydicom():
            return _guarded(path, self._header, path, pseudonymize)

    def decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        with _quiet_pydicom():
            return self._decode(path, max_pixels=max_pixels)

    def dataset(self, path: Path) -> Dataset:
        """The whole dataset, pixels undecoded, a deflated one inflated no further than its
        header allows: for checks of a file's structure (is a dropped file complete?)."""
        with _quiet_pydicom():
            header = _read(path, self.header_cap, stop_before_pixels=True)
            rows, columns = (_optional_int(header, key) or 0 for key in ("Rows", "Columns"))
            return _read(path, _guarded(path, self._full_cap, header, rows, columns))

    def _header(self, path: Path, pseudonymize: Pseudonymize | None) -> ImageHeader:
        ds = _read(path, self.header_cap, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        sop = _text(ds, "SOPInstanceUID")
        spacing = meta.spacing_reading(ds)
        accession = dicom_text.identity(ds, "AccessionNumber")
        return ImageHeader(
            format=self.format_name,
            identity=f"sop:{sop}" if sop else sha256_identity(path),
            sop_instance_uid=sop,
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            accession_number=accession.shown if accession else None,
            # The exam's key where the number was not valid text (see dicom_text.identity).
            accession_key=accession.key if accession and not accession.clean else None,
            study_date=_text(ds, "StudyDate"),
            laterality=meta.laterality(ds),
            view=meta.view(ds),
            rows=_optional_int(ds, "Rows"),
            columns=_optional_int(ds, "Columns"),
            manufacturer=_text(ds, "Manufacturer"),
            manufacturer_model=_text(ds, "ManufacturerModelName"),
            # Not stored when decoding refuses it: the worker fails the image, naming it.
            pixel_spacing_mm=None if checks.implausible_spacing(spacing) else spacing.mm,
            view_flags=meta.view_flags(ds),
            burned_in_annotation=meta.burned_in_annotation(ds),
            voi=voi.describe(voi.choose(ds)),
            patient_pseudonym=_pseudonym(ds, path, pseudonymize),
        )

    def _decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        # Triage on the header first: a rejected or oversized file is never fully read.
        header = _read(path, self.header_cap, stop_before_pixels=True)
        rows, columns = _guarded(path, checks.image_size, header, path)
        # What questions the score itself first (an implant, two lateralities), then how
        # the file was read.
        notes = {**_guarded(path, meta.score_notes, header),
                 **_guarded(path, checks.triage, header, path)}
        if lenient := _guarded(path, meta.laterality_reading, header):
            notes["laterality_value"] = lenient
        check_pixel_count(path, rows, columns, max_pixels)
        syntax = checks.transfer_syntax(header, path)
        checks.video(syntax, path)
        plugin = _plugin_for(syntax, path)
        ds = _read(path, _guarded(path, self._full_cap, header, rows, columns))
        _guarded(path, checks.pixel_length, ds, syntax, path)
        if syntax.is_compressed:
            _guarded(path, _check_frame_header, ds, path, max_pixels)
        spacing = meta.spacing_reading(ds)
        checks.plausible_spacing(spacing, path)
        invert = meta.inverted(ds)
        choice = _guarded(path, voi.choose, ds)
        voi.refuse_unusable(choice, path)
        rescale = _guarded(path, voi.read_rescale, ds, path)
        pixels, max_value = _guarded(path, _display_pixels, ds, syntax, plugin, path, invert,
                                     choice, notes)
        notes.update(transfer_syntax=syntax.name, voi=voi.describe(choice) or choice.kind)
        if spacing.notes:
            notes["pixel_spacing"] = "; ".join(spacing.notes)
        if rescale:
            notes["rescale"] = "; ".join(rescale)
        if plugin:
            notes["decoder"] = plugin
        pixels = _upright(pixels, meta.column_reading(ds), notes)
        return DecodedImage(
            pixels=pixels, format=self.format_name, max_value=max_value,
            invert=invert, notes=notes,
            pixel_spacing_mm=spacing.mm, chest_wall_side=meta.chest_wall_side(ds),
        )

    def _full_cap(self, header: Dataset, rows: int, columns: int) -> _InflateCap:
        """The header allowance plus the pixel data the header declares (one frame: triage
        refuses more), so a dataset whose pixels inflate far past it stops there."""
        samples = int(header.get("SamplesPerPixel") or 1)
        bits = int(header.get("BitsAllocated") or 16)
        pixel_bytes = rows * columns * min((samples * bits + 7) // 8, _WIDEST_PIXEL_BYTES)
        return _InflateCap(
            self.header_cap.size + pixel_bytes,
            f"{_BESIDES_PIXELS} ({self.header_cap.size:,} bytes) plus the {pixel_bytes:,} "
            f"bytes of pixel data its header declares ({columns} x {rows}, {samples} "
            f"sample(s) of {bits} bits allocated)")


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value-validation warnings while reading.

    Real files break VR rules all the time (an 18-character accession number); the warnings
    say nothing we act on, may quote element values (patient data included) into logs, and
    would abort the read where tests turn warnings into errors. Not thread-safe on 3.11
    (``catch_warnings`` is process-global); workers are processes. Among them is the one
    for bytes not valid in the declared character set: what it would say, the U+FFFD it
    leaves in the text says (``dicom_text``), and patient IDs and accession numbers read
    with one are keyed by their bytes and noted.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def _raw_dataset(head: bytes) -> bool:
    """A dataset written without preamble and meta header (older PACS exports, network
    dumps): it opens with a little-endian group 0002 or 0008 element, then either a VR
    (explicit) or a 4-byte length (implicit). No other format we read starts this way."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00") or head[3] != 0:
        return False
    vr = head[4:6]
    return (vr.isalpha() and vr.isupper()) or int.from_bytes(head[4:8], "little") < 1 << 16


def _read(path: Path, cap: _InflateCap, **options: Any) -> Dataset:
    """The dataset, as ``dcmread`` reads it; a deflated one inflates to at most ``cap``."""
    try:
        with path.open("rb") as handle:
            deflated = deflate.deflated_meta(handle)
            if deflated is not None:
                ds = deflate.read_deflated(path, handle, deflated, limit=cap.size, **options)
            else:
                # force: a dataset without a Part 10 header (see _raw_dataset) reads as well.
                ds = dcmread(path, force=True, **options)
    except OSError as exc:
        raise open_error(path, exc) from exc
    except deflate.InflateLimitError as exc:
        raise ImageTooLargeError(
            f"{path.name} is compressed with {DeflatedExplicitVRLittleEndian.name}, and its "
            f"dataset inflates past {exc.limit:,} bytes, {cap.allows}; it was "
            "refused before inflating further. The file is damaged or built to exhaust "
            "memory: export the image again.") from exc
    except Exception as exc:  # pydicom raises many types for a damaged file; all mean this
        if _software_fault(exc):
            raise
        _log_refusal(path, exc)
        raise UnreadableImageError(
            f"{path.name} is not a readable DICOM file ({type(exc).__name__}: "
            f"{_summary(exc)})."
        ) from exc
    if "TransferSyntaxUID" not in ds.file_meta and "PixelData" in ds:
        # pydicom decodes only with a declared syntax; a raw dataset's is how it was read.
        ds.file_meta.TransferSyntaxUID = checks.transfer_syntax(ds, path)
    return ds


def _guarded(path: Path, step: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``step``; a pydicom or numpy error on this file becomes an UnreadableImageError.

    A fault of this software or of the host (``_software_fault``) propagates as raised:
    ``unreadable`` would blame the file, and is not retried when the same file is submitted
    again. The worker records a software fault as ``internal_error`` (logged with its
    traceback), which is retried; a host fault it retries itself (``worker.decoding``).
    """
    try:
        return step(*args, **kwargs)
    except InputError:
        raise
    except Exception as exc:
        if _software_fault(exc):
            raise
        _log_refusal(path, exc)
        raise UnreadableImageError(
            f"{path.name} could not be interpreted: {_summary(exc)}."
        ) from exc


def _software_fault(exc: Exception) -> bool:
    """Whether ``exc`` is a fault of this software or its installation, not of the file.

    pydicom and numpy raise nearly any type on a damaged file (TypeError, ValueError,
    KeyError, IndexError, struct.error, RecursionError on nested sequences, AttributeError on
    their own objects), so only what no file content can cause counts:

    - NameError (UnboundLocalError too), ImportError (ModuleNotFoundError too), SyntaxError:
      code that does not run as written (a source file mid-edit, a broken install);
    - the host running short (``base.host_fault``): a MemoryError (numpy's "Unable to
      allocate" under a memory limit), an OSError ENOMEM, EMFILE or ENFILE. Blamed on the
      file, a healthy image failed ``unreadable`` and stayed failed when sent again;
    - an AttributeError whose ``obj`` is a module, or a class or object of this project: a
      helper or field that does not exist. One on a pydicom Dataset (a missing element), on
      None or on a value read from the file stays the file's.

    Where it was raised does not tell them apart: our own ``int()`` of a header value fails
    in our frame on a damaged file, and a helper missing from a module fails in ours too.
    """
    if isinstance(exc, NameError | ImportError | SyntaxError) or host_fault(exc):
        return True
    if not isinstance(exc, AttributeError):
        return False
    owner = exc.obj
    if isinstance(owner, ModuleType):
        return True
    module = getattr(owner if isinstance(owner, type) else type(owner), "__module__", "")
    return str(module).partition(".")[0] in _OWN_PACKAGES


def _plugin_for(syntax: UID, path: Path) -> str:
    """The decoding plugin to use ("" for pydicom's own); refuse syntaxes nobody decodes."""
    if syntax == JPEGExtended12Bit and gdcm_direct.available():
        return "gdcm"  # 8-bit streams go through pydicom's plugin, 12-bit ones direct
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedCompressionError(checks.no_decoder_message(syntax, path)) from None
    if decoder.is_native and str(syntax) not in PREFERRED_PLUGINS:
        return ""
    available = decoder.available_plugins
    if not available:
        raise UnsupportedCompressionError(checks.no_decoder_message(syntax, path))
    preferred = PREFERRED_PLUGINS.get(str(syntax), ())
    return next((name for name in preferred if name in available), sorted(available)[0])


def _stored_values(ds: Dataset, syntax: UID, plugin: str, path: Path) -> np.ndarray:
    if syntax == JPEGExtended12Bit and int(ds.get("BitsStored") or 8) > 8:
        if not gdcm_direct.available():
            raise UnsupportedCompressionError(
                f"{checks.no_decoder_message(syntax, path)} (12-bit JPEG Extended: only "
                "python-gdcm decodes it)")
        return gdcm_direct.decode_stored_values(path, int(ds.Rows), int(ds.Columns))
    try:
        # The words as written: which of their bits are the value is settled by
        # dicom_bits.stored_values, which reads High Bit (pydicom keeps the lowest Bits
        # Stored bits whatever it says).
        ds.pixel_array_options(decoding_plugin=plugin, correct_unused_bits=False)
        return ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        _log_refusal(path, exc)
        text = _summary(exc)
        if syntax.is_compressed and "support" in str(exc):
            # An installed plugin exists but cannot do this variant.
            raise UnsupportedCompressionError(
                f"{checks.no_decoder_message(syntax, path)} (installed: {text})") from exc
        raise UnreadableImageError(
            f"{path.name}: the (7FE0,0010) Pixel Data could not be decoded: {text}.") from exc


def _check_frame_header(ds: Dataset, path: Path, max_pixels: int) -> None:
    """Refuse a compressed frame whose codestream declares another image than the header
    (more pixels than the limit: ``too_large``; another size or number of components:
    ``unreadable``), before a decoder allocates for it.

    Triage lets one frame through (``checks.triage``): its codestream's header is read from
    its first fragment, or from all its fragments where the header runs on past the first.
    """
    declared = _frame_header(ds)
    if declared is None:
        return  # RLE, or no codestream the decoder will accept: it says why itself
    columns, rows = int(ds.Columns), int(ds.Rows)
    samples = int(ds.get("SamplesPerPixel") or 1)
    stated = f"where (0028,0011) Columns and (0028,0010) Rows say {columns} x {rows}"
    size = (f"{declared.columns} x {declared.rows} pixels" if declared.rows
            else f"{declared.columns} pixels a row")  # a height left to a DNL marker
    opening = (f"{path.name}: the (7FE0,0010) Pixel Data was not decoded: its compressed "
               f"data ({declared.kind}) declares")
    pixels = declared.columns * declared.rows
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{opening} {size} ({pixels:,}), past the limit of {max_pixels:,} pixels "
            f"(setting MAMMO_MAX_IMAGE_PIXELS), {stated}. The file is damaged or built to "
            "exhaust memory: export the image again.")
    # 0: not declared, where a JPEG leaves its height to a DNL marker (decoders refuse it).
    if any(found and found != expected
           for found, expected in ((declared.columns, columns), (declared.rows, rows))):
        raise UnreadableImageError(
            f"{opening} {size}, {stated}. The file is damaged: export the image again.")
    if declared.components != samples:
        raise UnreadableImageError(
            f"{opening} {declared.components} component(s) a pixel, where (0028,0002) "
            f"Samples per Pixel says {samples}. The file is damaged: export the image again.")


def _frame_header(ds: Dataset) -> codestream.FrameHeader | None:
    """What the first frame's codestream declares (``dicom_codestream.frame_header``), read
    from the start of its first fragment, or from more of the frame where its header runs
    on; None where none can be read (damaged fragments: the decoder's error says why)."""
    first = _first_fragment(ds.PixelData)
    if first is None:
        return None  # damaged encapsulation: the decoder says so
    for data in (lambda: bytes(first[:_HEADER_BYTES]), lambda: bytes(first),
                 lambda: get_frame(ds.PixelData, 0, number_of_frames=1)):
        try:
            return codestream.frame_header(data())
        except codestream.Incomplete:
            continue
        except ValueError:  # a damaged item among the fragments after the first
            return None
    return None


def _first_fragment(pixel_data: bytes) -> memoryview | None:
    """The first fragment of encapsulated pixel data, not copied: its items are the Basic
    Offset Table, then the fragments, each an Item tag and a 4-byte length (little-endian)."""
    view, at, start = memoryview(pixel_data), 0, 0
    for _ in range(2):
        if view[at:at + 4] != _ITEM_TAG or len(view) < at + 8:
            return None
        start = at + 8
        at = start + int.from_bytes(view[at + 4:at + 8], "little")
    return view[start:at]


def _codestream_size(ds: Dataset) -> tuple[int, int] | None:
    """(columns, rows) the first frame's codestream declares; None where none is read."""
    declared = _frame_header(ds)
    return None if declared is None else (declared.columns, declared.rows)


def _display_pixels(ds: Dataset, syntax: UID, plugin: str, path: Path, invert: bool,
                    choice: voi.VoiChoice, notes: dict[str, str]) -> tuple[np.ndarray, float]:
    """Display values (see ``_to_display``), padding set to the darkest one.

    An image the header blanks (a window outside its values, a padding range over every
    pixel) is refused here, naming what blanked it: preprocessing could only call it blank.
    """
    words = _stored_values(ds, syntax, plugin, path)
    stored = _grey(bits.stored_values(words, ds, path, notes), ds, path, notes)
    padding_range = _padding_range(ds)
    pixels, max_value = _displayed(stored, ds, path, choice, padding_range)
    padding = _padding(stored, padding_range)
    if padding is not None:
        if padding.all():
            raise EmptyImageError(_all_padding_message(ds, path))
        # Padding is no part of the image, whatever value it was written with (stored 0 in
        # a MONOCHROME1 image displays white): as background, the breast mask and the
        # contrast stretch never see it. The darkest value is the top one when inverted.
        pixels[padding] = np.float32(max_value if invert else 0.0)
    return pixels, max_value


def _upright(pixels: np.ndarray, column: meta.ColumnReading, notes: dict[str, str]
             ) -> np.ndarray:
    """``pixels`` the right way up (head at the top) where Patient Orientation says they
    were stored upside down, as the raster readers apply an EXIF Orientation: here, once,
    so the score, the report's picture and its heatmap all see the breast as it is hung.
    Only top and bottom are swapped; left and right stay for ``chest_wall_side``."""
    if column.note is not None:
        notes["orientation"] = column.note
    return np.ascontiguousarray(pixels[::-1]) if column.upside_down else pixels


def _grey(stored: np.ndarray, ds: Dataset, path: Path, notes: dict[str, str]) -> np.ndarray:
    """One grey channel: grey stored as RGB or YBR (decoded to RGB) is merged as the raster
    readers merge it, true colour refused; the dataset then describes a grey image, so the
    VOI window applies to it."""
    if stored.ndim != 3:
        return stored
    grey, merged = to_grayscale(np.ascontiguousarray(stored[..., ::-1]), path)  # as BGR
    notes.update(merged)
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    return grey


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """The stored values that are padding: (0028,0120) Pixel Padding Value, or it to
    (0028,0121) Pixel Padding Range Limit inclusive; None when there is no padding."""
    value = _optional_int(ds, "PixelPaddingValue")
    if value is None:
        return None
    limit = _optional_int(ds, "PixelPaddingRangeLimit")
    low, high = sorted((value, value if limit is None else limit))
    return low, high


def _padding(stored: np.ndarray, padding_range: tuple[int, int] | None) -> np.ndarray | None:
    """Where the stored values are padding; None when none is (or there is no padding)."""
    if padding_range is None:
        return None
    low, high = padding_range
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _all_padding_message(ds: Dataset, path: Path) -> str:
    value = _optional_int(ds, "PixelPaddingValue")
    limit = _optional_int(ds, "PixelPaddingRangeLimit")
    declared = (f"is its (0028,0120) Pixel Padding Value {value}" if limit is None else
                f"lies in its padding range, (0028,0120) Pixel Padding Value {value} to "
                f"(0028,0121) Pixel Padding Range Limit {limit}")
    return (f"{path.name} is blanked by its header, not blank: every pixel's stored value "
            f"{declared}, and padding is no part of the image, so nothing of it is left to "
            "score. Export the image again with the padding the modality uses.")


def _blanked_message(path: Path, choice: voi.VoiChoice, values: tuple[float, float]) -> str:
    """Why a header's Modality LUT and VOI transform leave an image of varied stored values
    (running from ``values``, after the Modality LUT) one display value."""
    if choice.kind == "window":
        what = (f"its window, (0028,1050) Window Center {choice.centre:g} and (0028,1051) "
                f"Window Width {choice.width:g} ({choice.function}),")
        fix = "a window over the image's values"
    elif choice.kind == "lut":
        what = f"its VOI LUT ((0028,3010) VOI LUT Sequence item {choice.index + 1})"
        fix = "a VOI LUT over the image's values"
    else:
        what = "its Modality LUT (rescale)"
        fix = "a valid rescale"
    return (f"{path.name} is blanked by its header, not blank: its pixel values run from "
            f"{values[0]:,g} to {values[1]:,g}, but {what} maps every one of them to (almost) "
            f"the same display value, so nothing of the image is left to score. Export the "
            f"image again with {fix}.")


def _displayed(stored: np.ndarray, ds: Dataset, path: Path, choice: voi.VoiChoice,
               padding_range: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """(display values, their range's width); refused where the stored values vary but the
    values outside ``padding_range`` all display (almost) alike (``_blanked_message``)."""
    if stored.ndim != 2:
        raise UnreadableImageError(
            f"{path.name}: decoded pixel data has shape {stored.shape}, not one 2-D image.")
    low, high = voi.output_range(ds, choice)
    if high <= low:
        raise UnreadableImageError(
            f"{path.name}: the rescale/VOI output range is empty ({low} to {high}).")
    if np.issubdtype(stored.dtype, np.integer) and stored.dtype.itemsize <= 2:
        # Every stored value maps the same way: transform each distinct value once (at most
        # 65,536) and look the pixels up, instead of float64 arithmetic on 14 M pixels.
        first, last = int(stored.min()), int(stored.max())
        domain = np.arange(first, last + 1, dtype=np.int64)
        table = _to_display(domain, ds, choice, low, high)
        _refuse_blanked(table, domain, ds, path, choice, padding_range, high - low)
        unsigned_from_zero = first == 0 and stored.dtype.kind == "u"
        index = stored if unsigned_from_zero else stored.astype(np.int32) - first
        return table[index], float(high - low)
    return _to_display(stored, ds, choice, low, high), float(high - low)


def _refuse_blanked(table: np.ndarray, domain: np.ndarray, ds: Dataset, path: Path,
                    choice: voi.VoiChoice, padding_range: tuple[int, int] | None,
                    width: float) -> None:
    """Refuse an image whose varied stored values (``domain``, outside the padding) all map
    to display values within preprocessing's blank threshold of one another: the header's
    transform blanked it, and preprocessing could only call it blank. A look at the table
    (at most 65,536 entries), never at the pixels."""
    if len(domain) < 2:
        return  # one stored value: blank as stored, for preprocessing to say
    shown = table
    if padding_range is not None:
        shown = table[(domain < padding_range[0]) | (domain > padding_range[1])]
        if len(shown) == 0:
            return  # every value is padding: _display_pixels names it
    if float(shown.max()) - float(shown.min()) < MIN_CONTRAST * width:
        values = apply_modality_lut(domain[[0, -1]], ds)
        raise EmptyImageError(_blanked_message(
            path, choice, (float(np.min(values)), float(np.max(values)))))


def _to_display(stored: np.ndarray, ds: Dataset, choice: voi.VoiChoice, low: float,
                high: float) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, shifted so the darkest output is 0 (float32)."""
    values = apply_modality_lut(stored, ds)
    if choice.kind == "lut" and np.issubdtype(values.dtype, np.floating):
        # A VOI LUT indexes by integer; rescale of X-ray images is integral anyway.
        values = np.rint(values).astype(np.int64)
    values = voi.apply(values, ds, choice)
    # float32 holds every 16-bit value exactly and halves the memory of a 60 MB mammogram.
    shifted = np.asarray(values, dtype=np.float32) - np.float32(low)
    np.clip(shifted, 0.0, high - low, out=shifted)
    return shifted


def _pseudonym(ds: Dataset, path: Path, pseudonymize: Pseudonymize | None) -> str | None:
    """The keyed pseudonym of (0010,0020) Patient ID: of its text, or of its bytes where it
    was not valid text in the file's character set (``dicom_text.identity``), so that two
    patients whose IDs read alike through replacement characters stay two."""
    patient_id = dicom_text.identity(ds, "PatientID")
    if patient_id is None:
        return None
    if pseudonymize is None:
        raise PseudonymKeyMissingError(
            f"{path.name} carries a (0010,0020) Patient ID and no key is configured to "
            f"pseudonymise it; patient IDs are never stored in clear. To accept it, "
            f"{KEY_HINT}.")
    return pseudonymize(patient_id.key)


_text = meta.text


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return int(value) if isinstance(value, int) else None


def _log_refusal(path: Path, exc: BaseException) -> None:
    """The library error a file is refused for, in full but printable, with the stack where
    it was raised (code, not values) for whoever debugs the reader."""
    stack = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    log.info("%s refused: %s: %s\n%s", path.name, type(exc).__name__,
             _summary(exc, limit=LOG_LIMIT), stack.rstrip())


DICOM = DicomReader()
