"""The MIAS layout: ``Info.txt`` (the database's truth table) plus ``mdbNNN`` images.

``Info.txt`` is found in any case (``info.txt``, ``INFO.TXT``: as a Windows share, a FAT
stick or a zip may write it). The images lie beside it or, where none does, in its
subfolders (Kaggle's copy keeps them in ``all-mias/``).

Facts taken from the database's own notes, not invented here:
* one row per abnormality; an image's label is malignant if any row is M, else benign if any
  row is B, else normal;
* x, y give the centre of a circle enclosing the abnormality, origin at the BOTTOM-LEFT
  corner, so the row index is ``height - y``; some rows have no coordinates;
* consecutive numbers are one patient: even = left breast, odd = right breast
  (mdb001 + mdb002 is one patient).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from pathlib import Path

from models.datasets import IMAGE_SUFFIXES, LabelledImage, Roi, files_below, some
from shared.enums import Label, Laterality
from shared.errors import DatasetError, InputError
from shared.imaging.readers import read_header

INFO_FILE = "Info.txt"
MIAS_HEIGHT = 1024  # every mini-MIAS image is 1024 x 1024 (Info.txt note 2); the fallback
# A truth row starts with the image's reference; the header and notes never do.
_REF = re.compile(r"^mdb\d+(\s|$)", re.IGNORECASE)
# "*NOTE 3*" marks widely distributed calcifications: a label without a circle.
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([A-Z]+))?"
                  r"(?:\s+(\d+)\s+(\d+)\s+(\d+))?(?:\s+\*NOTE\s*\d\*)?\s*$", re.IGNORECASE)
ABNORMAL = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM")  # the database's classes
SEVERITIES = ("B", "M")
_SUFFIXES = (".pgm", ".png")

Finding = tuple[str, str | None, tuple[int, int, int] | None]


def parse_row(line: str, where: str) -> tuple[str, Finding] | None:
    """(reference, (class, severity, circle)) of one Info.txt line; None for header and
    notes. A truth row it cannot interpret is refused, naming ``where`` (file and line):
    dropping or relabelling it would change the training labels silently."""
    text = line.strip()
    if not _REF.match(text):
        return None
    match = _ROW.match(text)
    if not match:
        raise DatasetError(
            f"{where}: {text!r} is not a truth row (mdbNNN, tissue F/G/D, class, then for "
            "an abnormality its severity B/M and optionally x y radius).")
    ref, _tissue, kind, severity, x, y, r = match.groups()
    kind, severity = kind.upper(), severity.upper() if severity else None
    coords = (int(x), int(y), int(r)) if x is not None else None
    if kind == "NORM":
        if severity or coords:
            raise DatasetError(f"{where}: {text!r} is NORM but gives a severity or circle.")
    elif kind not in ABNORMAL:
        raise DatasetError(f"{where}: class {kind!r} is not NORM or one of "
                           f"{', '.join(ABNORMAL)}.")
    elif severity is None:
        raise DatasetError(f"{where}: {kind} has no severity (B or M): its label is unknown.")
    elif severity not in SEVERITIES:
        raise DatasetError(f"{where}: severity {severity!r} is not B (benign) or M "
                           "(malignant).")
    return ref.lower(), (kind, severity, coords)


def _number(image_id: str) -> int:
    return int(image_id[3:])


def patient_of(image_id: str) -> str:
    """mdb001 and mdb002 -> 'mias-001'; the pair's odd number names the patient."""
    n = _number(image_id)
    return f"mias-{n - (n + 1) % 2:03d}"


def laterality_of(image_id: str) -> Laterality:
    return Laterality.LEFT if _number(image_id) % 2 == 0 else Laterality.RIGHT


def info_file(folder: Path) -> Path | None:
    """``folder``'s Info.txt, its name in any case; None when it has none. Two whose names
    differ only in case (a case-sensitive file system can hold both) are refused: which
    one is the truth is unknown."""
    found = sorted(path for path in folder.iterdir()
                   if path.name.lower() == INFO_FILE.lower() and path.is_file())
    if len(found) > 1:
        raise DatasetError(f"{folder} holds {' and '.join(p.name for p in found)}: two truth "
                           "tables, and which one is right is unknown. Keep one of them.")
    return found[0] if found else None


def _info(folder: Path) -> Path:
    if (info := info_file(folder)) is None:
        raise DatasetError(f"{folder} has no {INFO_FILE} (the MIAS truth table).")
    return info


def truth_rows(folder: Path) -> dict[str, list[Finding]]:
    """Info.txt's findings by image reference (lower case), in the file's order."""
    info = _info(folder)
    raw = info.read_bytes()
    if (encoding := _wide_encoding(raw)) is not None:
        # Read as latin-1, every character would be followed by a NUL and no row would match.
        raise DatasetError(f"{info} is saved as {encoding}, not as plain text: "
                           "save it as UTF-8 or ASCII text (in most editors: Save As, "
                           "Encoding UTF-8) and run the command again.")
    # latin-1 reads any byte; a byte-order mark an editor saved is not part of the first row.
    text = raw.removeprefix(codecs.BOM_UTF8).decode("latin-1")
    rows: dict[str, list[Finding]] = {}
    # The first row saying an image is normal, and the first giving it an abnormality.
    said: dict[tuple[str, bool], tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parsed = parse_row(line, f"{info} line {number}")
        if parsed is not None:
            rows.setdefault(parsed[0], []).append(parsed[1])
            said.setdefault((parsed[0], parsed[1][0] == "NORM"), (number, line.strip()))
    if not rows:
        raise DatasetError(f"{info} has no truth-table rows (mdbNNN ...).")
    _require_no_contradiction(info, rows, said)
    return rows


def _require_no_contradiction(info: Path, rows: dict[str, list[Finding]],
                              said: dict[tuple[str, bool], tuple[int, str]]) -> None:
    """Refuse an image that one row calls normal and another abnormal: its label is
    unknown (taking the abnormal one would guess)."""
    for ref in rows:
        if (ref, True) in said and (ref, False) in said:
            (a, first), (b, then) = sorted((said[ref, True], said[ref, False]))
            raise DatasetError(
                f"{info} lines {a} and {b} contradict each other about {ref} ({first!r}, "
                f"{then!r}): one says it is normal (NORM), the other that it has an "
                "abnormality, so its label is unknown. Keep the row that is right.")


def _wide_encoding(raw: bytes) -> str | None:
    """The encoding of a text file saved with more than one byte per character (its
    byte-order mark, or NUL bytes, which no ASCII or UTF-8 text holds), else None."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            return name
    return "UTF-16 or another encoding with NUL bytes" if b"\0" in raw else None


def _image_files(folder: Path) -> dict[str, list[Path]]:
    """The image files beside Info.txt by lower-case name (MDB004.PNG is mdb004.png; a
    case-sensitive file system can hold both); where there are none, those in its
    subfolders (Kaggle's ``all-mias/``), where one name may be found in two of them."""
    beside = [path for path in sorted(folder.iterdir())
              if path.is_file() and not path.name.startswith(".")]
    if not any(path.suffix.lower() in IMAGE_SUFFIXES for path in beside):
        beside = files_below(folder)
    files: dict[str, list[Path]] = {}
    for path in beside:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.setdefault(path.name.lower(), []).append(path)
    return files


def load_mias(folder: Path) -> list[LabelledImage]:
    """The images of a MIAS folder with their truth. An image file without a truth row is
    refused (its label is unknown, and leaving it out would train on part of the data
    without a word); a row without an image is not (Info.txt describes the whole database,
    a split holds part of it): ``rows_without_image`` names those."""
    rows = truth_rows(folder)
    files = _image_files(folder)

    def named(paths: Sequence[Path]) -> list[str]:  # as found: beside Info.txt or below
        return [path.relative_to(folder).as_posix() for path in paths]

    # Another image format would otherwise be reported as lacking a truth row.
    if foreign := sorted(named([p for paths in files.values() for p in paths
                                if p.suffix.lower() not in _SUFFIXES])):
        raise DatasetError(
            f"{len(foreign)} image file(s) in {folder} ({some(foreign)}) are not in a format "
            f"a MIAS folder holds: its images are mdbNNN{' or mdbNNN'.join(_SUFFIXES)} "
            "files. Convert them to PNG (keeping the mdbNNN name), or move them out of the "
            "folder.")
    images = []
    for ref, findings in rows.items():
        found = [p for s in _SUFFIXES for p in files.pop(f"{ref}{s}", [])]
        if not found:
            continue
        if len(found) > 1:
            raise DatasetError(f"{' and '.join(named(found))} in {folder} are each "
                               f"image {ref}: keep one of them.")
        images.append(_labelled(ref, found[0], findings))
    if unlisted := sorted(named([p for paths in files.values() for p in paths])):
        raise DatasetError(
            f"{_info(folder)} has no truth row for {len(unlisted)} image file(s) in the "
            f"folder ({some(unlisted)}), so their labels are unknown: add a row for each (a "
            "MIAS image is mdbNNN.pgm or mdbNNN.png), or move them out of the folder.")
    if not images:
        raise DatasetError(
            f"{_info(folder)} lists {len(rows)} image(s), but neither {folder} nor its "
            "subfolders hold any of their files (mdbNNN.pgm or mdbNNN.png).")
    return images


def _labelled(ref: str, path: Path, findings: Sequence[Finding]) -> LabelledImage:
    """Image ``ref`` at ``path`` with the label and circles of its Info.txt rows."""
    severities = {s for _, s, _ in findings if s}
    label = (Label.MALIGNANT if "M" in severities else
             Label.BENIGN if "B" in severities else Label.NORMAL)
    height = _height(path) if any(c for _, _, c in findings) else MIAS_HEIGHT
    rois = tuple(
        Roi(x=float(c[0]), y=float(height - c[1]), radius=float(c[2]),
            severity=Label.MALIGNANT if s == "M" else Label.BENIGN)
        for _, s, c in findings if c is not None and s)
    return LabelledImage(id=ref, path=path, label=label, patient_id=patient_of(ref),
                         laterality=laterality_of(ref), view="MLO", rois=rois)


def rows_without_image(folder: Path, images: Sequence[LabelledImage]) -> str | None:
    """The warning that ``folder``'s Info.txt lists images that are not among ``images``
    (its loaded ones), naming them; None when every row has its image."""
    loaded = {image.id for image in images}
    missing = [ref for ref in truth_rows(folder) if ref not in loaded]
    if not missing:
        return None
    homes = {image.path.parent for image in images}  # a subfolder where the images lie
    home = homes.pop() if len(homes) == 1 else folder
    said = (f"{_info(folder)} lists {len(missing)} image(s) that are not in the folder "
            f"({some(missing)}): they are left out of this data. If they belong in it, put "
            f"their files (mdbNNN.pgm or mdbNNN.png) in {home}.")
    if home != folder:
        return said
    # Images beside Info.txt: its subfolders are not read, so name what lies there.
    wanted = {f"{ref}{suffix}" for ref in missing for suffix in _SUFFIXES}
    if below := [path.relative_to(folder).as_posix() for path in files_below(folder)
                 if path.parent != folder and path.name.lower() in wanted]:
        said += (f" {len(below)} such file(s) lie in its subfolders ({some(below)}), which "
                 "are read only when no image lies beside Info.txt.")
    return said


def _height(path: Path) -> int:
    """Rows of the stored image (1024 for mini-MIAS), read from its header only."""
    try:
        rows = read_header(path).rows
    except InputError:
        return MIAS_HEIGHT
    return int(rows) if rows else MIAS_HEIGHT
