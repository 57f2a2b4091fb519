"""DICOM Part 10 files, read by pydicom: triage on the header, then decode and apply LUTs.

Pixels come out after the Modality LUT (rescale) and the VOI LUT or window, i.e. as a
radiologist would see them, shifted so the darkest possible output is 0: ``max_value`` is
the width of the VOI output range, not of the stored bits. MONOCHROME1 (high values dark) is
NOT inverted here; ``DecodedImage.invert`` is set and preprocessing inverts it.

Patient-identifying elements are never read into an ``ImageHeader`` and never appear in a
message; pydicom's own error texts are safe to repeat because we never ask it to convert
patient elements, which is where such values would surface.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from shared.enums import Laterality, View
from shared.errors import (
    InputError,
    UnreadableImageError,
    UnsupportedCompressionError,
)
from shared.imaging.readers import dicom_checks as checks
from shared.imaging.readers.base import check_pixel_count, open_error, sha256_identity
from shared.imaging.types import DecodedImage, ImageHeader

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Only these are parsed for the producer: nothing about the patient, by construction.
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "AccessionNumber", "StudyDate", "ImageLaterality", "Laterality", "ViewPosition",
    "ViewCodeSequence", "Rows", "Columns", "Manufacturer", "ManufacturerModelName",
]
# (0054,0220) View Code Sequence values, for files that leave ViewPosition empty.
_VIEW_CODES = {
    "R-10242": View.CC, "399162004": View.CC, "R-10226": View.MLO, "399368009": View.MLO,
    "R-10224": View.ML, "399260004": View.ML, "R-10228": View.LM, "399352003": View.LM,
}
# With several plugins installed pydicom tries gdcm first even where it is slower.
_PREFERRED_PLUGINS = ("pyjpegls", "pylibjpeg", "pydicom", "gdcm", "pillow")


class DicomReader:
    format_name = "dicom"

    def sniff(self, head: bytes) -> bool:
        # Part 10: a 128-byte preamble then "DICM", whatever the file is called.
        return head[128:132] == b"DICM"

    def read_header(self, path: Path) -> ImageHeader:
        with _quiet_pydicom():
            return _guarded(path, self._header, path)

    def decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        with _quiet_pydicom():
            return self._decode(path, max_pixels=max_pixels)

    def _header(self, path: Path) -> ImageHeader:
        ds = _read(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        sop = _text(ds, "SOPInstanceUID")
        return ImageHeader(
            format=self.format_name,
            identity=f"sop:{sop}" if sop else sha256_identity(path),
            sop_instance_uid=sop,
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
            laterality=Laterality.parse(
                _text(ds, "ImageLaterality") or _text(ds, "Laterality")),
            view=_view(ds),
            rows=_optional_int(ds, "Rows"),
            columns=_optional_int(ds, "Columns"),
            manufacturer=_text(ds, "Manufacturer"),
            manufacturer_model=_text(ds, "ManufacturerModelName"),
        )

    def _decode(self, path: Path, *, max_pixels: int) -> DecodedImage:
        # Triage on the header first: a rejected or oversized file is never fully read.
        header = _read(path, stop_before_pixels=True)
        rows, columns = _guarded(path, checks.image_size, header, path)
        notes = _guarded(path, checks.triage, header, path)
        check_pixel_count(path, rows, columns, max_pixels)
        syntax = checks.transfer_syntax(header, path)
        plugin = _plugin_for(syntax, path)
        ds = _read(path)
        _guarded(path, checks.pixel_length, ds, syntax, path)
        pixels, max_value, voi = _guarded(path, _display_pixels, ds, syntax, plugin, path)
        notes.update(transfer_syntax=syntax.name, voi=voi)
        return DecodedImage(
            pixels=pixels, format=self.format_name, max_value=max_value,
            invert=_text(ds, "PhotometricInterpretation") == "MONOCHROME1", notes=notes,
        )


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value-validation warnings while reading.

    Real files break VR rules all the time (an 18-character accession number); the warnings
    say nothing we act on, may quote element values (patient data included) into logs, and
    would abort the read where tests turn warnings into errors. Not thread-safe on 3.11
    (``catch_warnings`` is process-global); workers are processes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def _read(path: Path, **options: Any) -> Dataset:
    try:
        return dcmread(path, **options)
    except OSError as exc:
        raise open_error(path, exc) from exc
    except Exception as exc:  # pydicom raises many types for a damaged file; all mean this
        raise UnreadableImageError(
            f"{path.name} is not a readable DICOM file ({type(exc).__name__}: "
            f"{_summary(exc)})."
        ) from exc


def _guarded(path: Path, step: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``step``; a pydicom or numpy error on this file becomes an UnreadableImageError."""
    try:
        return step(*args, **kwargs)
    except InputError:
        raise
    except Exception as exc:
        raise UnreadableImageError(
            f"{path.name} could not be interpreted: {_summary(exc)}."
        ) from exc


def _plugin_for(syntax: UID, path: Path) -> str:
    """The decoding plugin to use ("" for pydicom's choice); refuse syntaxes nobody decodes."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedCompressionError(checks.no_decoder_message(syntax, path)) from None
    if decoder.is_native:
        return ""
    available = decoder.available_plugins
    if not available:
        raise UnsupportedCompressionError(checks.no_decoder_message(syntax, path))
    return next((name for name in _PREFERRED_PLUGINS if name in available), "")


def _display_pixels(ds: Dataset, syntax: UID, plugin: str,
                    path: Path) -> tuple[np.ndarray, float, str]:
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        stored = ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        text = _summary(exc)
        if syntax.is_compressed and "support" in text:
            # An installed plugin exists but cannot do this variant (e.g. 12-bit JPEG).
            raise UnsupportedCompressionError(
                f"{checks.no_decoder_message(syntax, path)} (installed: {text})") from exc
        raise UnreadableImageError(
            f"{path.name}: the (7FE0,0010) Pixel Data could not be decoded: {text}.") from exc
    if stored.ndim != 2:
        raise UnreadableImageError(
            f"{path.name}: decoded pixel data has shape {stored.shape}, not one 2-D image.")
    values = apply_modality_lut(stored, ds)
    voi = checks.voi_kind(ds)
    if voi == "lut" and np.issubdtype(values.dtype, np.floating):
        # A VOI LUT indexes by integer; rescale of X-ray images is integral anyway.
        values = np.rint(values).astype(np.int64)
    values = apply_voi_lut(values, ds, prefer_lut=True)
    low, high = checks.output_range(ds, voi)
    if high <= low:
        raise UnreadableImageError(
            f"{path.name}: the rescale/VOI output range is empty ({low} to {high}).")
    # float32 holds every 16-bit value exactly and halves the memory of a 60 MB mammogram.
    shifted = np.asarray(values, dtype=np.float32) - np.float32(low)
    np.clip(shifted, 0.0, high - low, out=shifted)
    return shifted, float(high - low), voi


def _view(ds: Dataset) -> View | None:
    view = View.parse(_text(ds, "ViewPosition"))
    if view is not None:
        return view
    codes = ds.get("ViewCodeSequence") or []
    code = str(codes[0].get("CodeValue", "")) if len(codes) else ""
    return _VIEW_CODES.get(code)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return int(value) if isinstance(value, int) else None


def _summary(exc: BaseException, limit: int = 300) -> str:
    # pydicom lists one line per plugin tried; keep them all, on one line.
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text or type(exc).__name__)[:limit].rstrip(".")


DICOM = DicomReader()
