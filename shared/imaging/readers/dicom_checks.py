"""Pure checks on a DICOM header, each raising an InputError that names the tag and value.

Kept apart from ``dicom.py`` so the triage rules (what we refuse, and why) read as one list.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import (
    ForProcessingImageError,
    MissingPixelDataError,
    NotAMammogramError,
    TruncatedImageError,
    UnexpectedChannelsError,
    UnreadableImageError,
)
from shared.imaging.readers.dicom_meta import SpacingReading, specimen_view

MAMMOGRAPHY_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # ... - For Processing (refused below, but a mammogram)
})
# Raw detector data: the model was trained on processed, presentation-ready images.
FOR_PROCESSING_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray - For Processing
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray - For Processing
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray - For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray - For Processing
})
# Standard SOP classes a 2-D mammogram may arrive as. Any other standard class (CT, a
# structured report, an encapsulated PDF, a presentation state) is not one, whatever its
# Modality says; a private or unknown class is judged by its Modality alone.
IMAGE_SOP_CLASSES = MAMMOGRAPHY_SOP_CLASSES | {
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography (digitised film, CR plates)
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray - For Presentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray - For Presentation
}
# A DICOMDIR (media index): no image, its SOP class only in the file meta header.
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
# Body Part Examined values (DICOM PS3.16 Annex L defined terms, and their common
# compounds) that name a part other than the breast. Only these refuse an image taken on
# trust: sites write the breast in their own language ("MAMA", "SENO", "SEIN", "BRUST"),
# which a list of accepted words would refuse.
OTHER_BODY_PARTS = frozenset({
    "ABDOMEN", "ANKLE", "ARM", "BRAIN", "CALCANEUS", "CHEST", "CLAVICLE", "COCCYX", "CSPINE",
    "ELBOW", "EXTREMITY", "FACE", "FEMUR", "FIBULA", "FINGER", "FOOT", "FOREARM", "HAND",
    "HEAD", "HEART", "HIP", "HUMERUS", "JAW", "KIDNEY", "KNEE", "LEG", "LIVER", "LSPINE",
    "MANDIBLE", "NECK", "ORBIT", "PATELLA", "PELVIS", "RIB", "RIBS", "SACRUM", "SCAPULA",
    "SHOULDER", "SINUS", "SKULL", "SPINE", "STERNUM", "TIBIA", "TOE", "TSPINE", "ULNA",
    "WHOLEBODY", "WRIST", "ZYGOMA", "CHESTABDOMEN", "CHESTABDPELVIS", "ABDOMENPELVIS",
    "HEADNECK", "TLSPINE", "CTSPINE", "LSSPINE", "THORAX",
})
# Modalities that are never a mammogram. Others (RG, DX, CR, OT, SC, none) are accepted with
# a note: digitised film and secondary captures of mammograms arrive that way.
REJECTED_MODALITIES = frozenset({
    "CT", "MR", "US", "NM", "PT", "XA", "RF", "ES", "OP", "OPT", "SM", "IVUS", "OCT", "PX",
    "IO", "ECG", "EPS", "HD", "RTIMAGE", "RTDOSE", "RTSTRUCT", "RTPLAN", "SEG", "SR", "PR",
    "KO", "DOC", "BMD", "XC", "GM",
})
# Grey is sometimes stored in these colour encodings (R = G = B, or Cb = Cr = 128); the reader
# merges such an image to one channel and refuses true colour, as for PNG and JPEG. pydicom
# decodes the YBR ones to RGB.
GREY_AS_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})
# Detector pixels of mammography systems are 0.05-0.2 mm, digitised film 0.5 mm at the
# coarsest; at 1 mm a 24 cm detector would be 240 pixels wide. A larger value is a unit
# error (micrometres written as millimetres: 50 for 50 um), which would let a picture of any
# size pass for a breast, as a far too small one does (preprocess.resample_to_spacing).
MAX_SPACING_MM = 1.0
# An encapsulated Pixel Data value opens with an Item tag (FFFE,E000), little-endian.
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_PLUGINS_JPEG = "pylibjpeg with pylibjpeg-libjpeg (GPL-3.0) or python-gdcm"
_PLUGINS_J2K = "pylibjpeg with pylibjpeg-openjpeg, or python-gdcm"
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.50": _PLUGINS_JPEG,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _PLUGINS_JPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _PLUGINS_JPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _PLUGINS_JPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": f"pyjpegls, {_PLUGINS_JPEG}",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": f"pyjpegls, {_PLUGINS_JPEG}",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _PLUGINS_J2K,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _PLUGINS_J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K
}


def triage(ds: Dataset, path: Path) -> dict[str, str]:
    """Refuse what is not a single presentation-ready mammogram; return notes on doubts."""
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    if sop_class in FOR_PROCESSING_SOP_CLASSES:
        raise ForProcessingImageError(
            f"{path.name} is a For Processing image: (0008,0016) SOP Class UID is "
            f"{UID(sop_class).name} ({sop_class}). Send the For Presentation image instead."
        )
    intent = str(ds.get("PresentationIntentType", "")).strip().upper()
    if intent == "FOR PROCESSING":
        raise ForProcessingImageError(
            f"{path.name} is a For Processing image: (0008,0068) Presentation Intent Type is "
            f"'{intent}'. Send the For Presentation image instead."
        )
    notes = _modality(ds, sop_class, path)
    specimen = specimen_view(ds)
    if specimen:
        raise NotAMammogramError(
            f"{path.name} is a specimen radiograph, not a screening mammogram: (0054,0220) "
            f"View Code Sequence is {specimen}."
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    grey_as_colour = photometric in GREY_AS_COLOUR and int(ds.get("SamplesPerPixel") or 1) == 3
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and not grey_as_colour:
        raise UnexpectedChannelsError(
            f"{path.name} is not a grayscale image: (0028,0004) Photometric Interpretation "
            f"is '{photometric or 'missing'}', expected MONOCHROME1 or MONOCHROME2 (or grey "
            "stored as RGB or YBR_FULL with 3 samples per pixel)."
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise NotAMammogramError(
            f"{path.name} holds {frames} frames ((0028,0008) Number of Frames); only "
            "single-frame 2-D mammograms are classified (not tomosynthesis or cine)."
        )
    return notes


def _modality(ds: Dataset, sop_class: str, path: Path) -> dict[str, str]:
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in REJECTED_MODALITIES:  # a mammography SOP class does not overrule it
        raise NotAMammogramError(
            f"{path.name} is not a mammogram: (0008,0060) Modality is '{modality}' "
            f"(SOP Class {UID(sop_class).name if sop_class else 'missing'})."
        )
    if sop_class and UID(sop_class).type == "SOP Class" and sop_class not in IMAGE_SOP_CLASSES:
        raise NotAMammogramError(
            f"{path.name} is not a mammogram: (0008,0016) SOP Class UID is "
            f"{UID(sop_class).name} ({sop_class}), which is not a 2-D X-ray image, although "
            f"(0008,0060) Modality is '{modality or 'missing'}'."
        )
    if modality == "MG" or sop_class in MAMMOGRAPHY_SOP_CLASSES:
        return {}
    _body_part(ds, path)
    found = f"'{modality}'" if modality else "missing"
    return {"modality": f"(0008,0060) Modality is {found}, not MG: classified as a mammogram "
                        "on trust"}


def _body_part(ds: Dataset, path: Path) -> None:
    """An image taken on trust (DX, CR, a secondary capture) must not name another body part:
    a chest or hand radiograph would otherwise be scored as a mammogram. Missing or empty
    stays accepted, as many digitisers leave it blank."""
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper()
    words = set(re.split(r"[^A-Z]+", body_part)) | {re.sub(r"[^A-Z]", "", body_part)}
    if words & OTHER_BODY_PARTS:
        raise NotAMammogramError(
            f"{path.name} is not a mammogram: (0018,0015) Body Part Examined is "
            f"'{body_part}', not BREAST."
        )


def image_size(ds: Dataset, path: Path) -> tuple[int, int]:
    """(Rows, Columns); checked first, so a DICOM that holds no image says exactly that."""
    if len(ds) == 0:
        raise UnreadableImageError(f"{path.name} has a DICOM signature but no data elements.")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        cut = _cut_short(ds, path)
        if cut:
            raise UnreadableImageError(cut)
        raise NotAMammogramError(_no_image_message(ds, path))
    for element, value in (("(0028,0010) Rows", rows), ("(0028,0011) Columns", columns)):
        if not value:
            raise UnreadableImageError(
                f"{path.name} declares an image of no size: {element} is {value!r} "
                f"({columns or 0} x {rows or 0} pixels). Its header is damaged: export the "
                "image again.")
    return int(rows), int(columns)


def _cut_short(ds: Dataset, path: Path) -> str | None:
    """Why the header stopped early, when its last element ran past the end of the file (a
    corrupt value length, or a file cut in its header): the elements after it, Rows among
    them, were never read, so the file says nothing of what it is. None otherwise."""
    tag = Tag(list(ds.keys())[-1])
    raw = ds.get_item(tag)
    declared, value = getattr(raw, "length", None), getattr(raw, "value", None)
    if not isinstance(value, bytes) or declared in (None, 0xFFFFFFFF) or len(value) >= declared:
        return None
    try:
        name = f"{tag} {dictionary_description(tag)}"
    except KeyError:  # a private element
        name = str(tag)
    return (f"{path.name} has a damaged header: its {name} element declares {declared:,} "
            f"bytes but the file ends {len(value):,} bytes into it, so (0028,0010) Rows and "
            "the elements after it could not be read. The file was cut short or damaged: "
            "export it again.")


def _no_image_message(ds: Dataset, path: Path) -> str:
    """Name the object a DICOM without Rows/Columns is, when its SOP class says: whoever sent
    a DICOMDIR or a CAD report needs that name, not "Rows is missing"."""
    sop_class = str(ds.get("SOPClassUID") or "").strip()
    tag = "(0008,0016) SOP Class UID"
    if not sop_class:  # a DICOMDIR has no (0008,0016); its class is in the file meta header
        sop_class = str(_file_meta(ds).get("MediaStorageSOPClassUID") or "").strip()
        tag = "(0002,0002) Media Storage SOP Class UID"
    name = UID(sop_class).name.removesuffix(" Storage") if sop_class else ""
    advice = "only 2-D mammograms are classified"
    if sop_class == MEDIA_DIRECTORY_SOP_CLASS:
        kind, advice = "a DICOMDIR (a media index)", "submit the image files it lists instead"
    elif "SR" in name.split():
        kind = f"a Structured Report ({name})"
    elif "Presentation State" in name:
        kind = f"a Presentation State ({name}: display settings for images sent separately)"
    elif "Key Object Selection" in name:
        kind = "a Key Object Selection document (a list of images flagged in a study)"
    elif (sop_class and UID(sop_class).type == "SOP Class"
          and sop_class not in IMAGE_SOP_CLASSES):
        kind = f"a DICOM object of the class {name}"
    else:  # an image class (or none) that states no size
        missing = [element for element, keyword in (
            ("(0028,0010) Rows", "Rows"), ("(0028,0011) Columns", "Columns"))
            if keyword not in ds]
        verb = "are" if len(missing) > 1 else "is"
        return f"{path.name} contains no image: {' and '.join(missing)} {verb} missing."
    return f"{path.name} is {kind}, not an image ({tag} {sop_class}); {advice}."


def _file_meta(ds: Dataset) -> Dataset:
    return getattr(ds, "file_meta", None) or Dataset()


def implausible_spacing(spacing: SpacingReading) -> bool:
    """Whether ``spacing`` is one no mammography detector or film digitiser has (see
    ``MAX_SPACING_MM``); one too small is refused in preprocessing, by the area it covers."""
    return spacing.mm is not None and max(spacing.mm) > MAX_SPACING_MM


def plausible_spacing(spacing: SpacingReading, path: Path) -> None:
    """Refuse an implausible pixel spacing (``implausible_spacing``), naming it."""
    if spacing.mm is None or not implausible_spacing(spacing):
        return
    row, column = spacing.mm
    raise NotAMammogramError(
        f"{path.name} states a pixel spacing of {row:g} x {column:g} mm ({spacing.element}): "
        f"no mammography detector or film digitiser has pixels over {MAX_SPACING_MM:g} mm. "
        "Check the pixel spacing in the DICOM header (a value in micrometres written as "
        "millimetres?).")


def transfer_syntax(ds: Dataset, path: Path) -> UID:
    """The file meta's Transfer Syntax UID; for a dataset stored without one (no Part 10
    meta header), the native encoding pydicom found the elements in."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax:
        return UID(str(syntax))
    implicit, little = ds.original_encoding
    if implicit is None:
        raise UnreadableImageError(
            f"{path.name} has no (0002,0010) Transfer Syntax UID in its file meta header.")
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def pixel_length(ds: Dataset, syntax: UID, path: Path) -> None:
    """Refuse missing pixel data, and uncompressed pixel data shorter than the header says
    or holding a whole frame more."""
    if "PixelData" not in ds:
        if _pixel_data_tag_present(path):
            # pydicom drops an encapsulated Pixel Data element whose end is missing.
            raise TruncatedImageError(
                f"{path.name} is truncated: its (7FE0,0010) Pixel Data element starts but the "
                f"file ends ({path.stat().st_size:,} bytes) before the element does.")
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnreadableImageError(
                f"{path.name} stores its pixels as floating-point values ((7FE0,0008) Float "
                "or (7FE0,0009) Double Float Pixel Data), which X-ray images never use and "
                "this pipeline does not read; export the image with integer (7FE0,0010) "
                "Pixel Data.")
        raise MissingPixelDataError(f"{path.name} contains no (7FE0,0010) Pixel Data.")
    if syntax.is_compressed:
        if not ds.PixelData.startswith(_ITEM_TAG):
            raise UnreadableImageError(
                f"{path.name} declares compressed pixel data ((0002,0010) Transfer Syntax "
                f"UID {syntax.name}), but its (7FE0,0010) Pixel Data holds raw values: the "
                "sending system wrote the wrong transfer syntax. Export it again.")
        return  # encapsulated: the decoder notices a damaged stream
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = int(ds.BitsAllocated)
    expected = (int(ds.Rows) * int(ds.Columns) * samples * frames * bits + 7) // 8
    found = len(ds.PixelData)
    if found < expected:
        raise TruncatedImageError(
            f"{path.name} is truncated: (7FE0,0010) Pixel Data holds {found:,} bytes, "
            f"{expected:,} expected for {ds.Columns} x {ds.Rows} at {bits} bits allocated."
        )
    if 0 < expected <= found - expected:
        # pydicom would read the excess as further frames, which the header never declared.
        raise UnreadableImageError(
            f"{path.name}: (7FE0,0010) Pixel Data holds {found:,} bytes, {found // expected} "
            f"times the {expected:,} its header declares ({ds.Columns} x {ds.Rows} at {bits} "
            f"bits allocated, {frames} frame(s)): the header does not describe the pixels. "
            "Export the image again."
        )


def video(syntax: UID, path: Path) -> None:
    """Refuse the MPEG and HEVC syntaxes: a video (an endoscopy, a cine loop), never a
    mammogram; installing a decoder would not change that."""
    if any(word in syntax.name for word in ("MPEG", "HEVC")):
        raise NotAMammogramError(
            f"{path.name} is a video ((0002,0010) Transfer Syntax UID {syntax.name}); only "
            "single 2-D mammograms are classified.")


def _pixel_data_tag_present(path: Path) -> bool:
    """Whether the (7FE0,0010) tag occurs in the file (little-endian, as in every syntax
    we decode); only called on the error path, so reading the file is affordable."""
    try:
        return b"\xe0\x7f\x10\x00" in path.read_bytes()
    except OSError:
        return False


def no_decoder_message(syntax: UID, path: Path) -> str:
    name = syntax.name if syntax.name != str(syntax) else "an unknown transfer syntax"
    hint = _PLUGIN_HINTS.get(str(syntax), "a pydicom decoding plugin for it")
    return (f"{path.name} is compressed with {name} ({syntax}), which this installation "
            f"cannot decode; installing {hint} would let it be read")
