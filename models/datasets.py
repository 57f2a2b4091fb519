"""Labelled images for training and evaluation, from the three layouts PRODUCT.md accepts.

* a MIAS-style folder: ``Info.txt`` plus ``mdbNNN.pgm`` or ``mdbNNN.png`` (see ``models.mias``);
* a CSV manifest: ``path,label`` with optional ``patient_id,laterality,view`` (and the other
  columns of ``mammo submit --manifest``, which train and evaluate do not use);
* a folder per class: ``normal/``, ``benign/``, ``malignant/``.

A data set that is not what it says is refused (``DatasetError``), never read in part: a
misspelt column, a file in a class folder that is no image this reads, an image beside the
class folders.

Only the MIAS layout carries lesion circles; the others train with weak (image-level) labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.enums import CLASSES, Label, Laterality, View
from shared.errors import DatasetError, InputError, ManifestError
from shared.filehash import file_sha256
from shared.imaging.readers import READERS, read_header
from shared.imaging.readers.base import HEAD_SIZE
from shared.manifest_csv import check_columns, delimiter_hint, header_found, read_rows

IMAGE_SUFFIXES = (".png", ".pgm", ".dcm", ".dicom", ".jpg", ".jpeg", ".tif", ".tiff")
# What folders of images carry beside them that is no image: notes and spreadsheets, an
# OS's thumbnail cache and folder settings, a DICOM media index (DICOMDIR, DICOM by content
# but no image). Passed over; any other file in a class folder is refused.
NOT_IMAGE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".md", ".rtf", ".pdf", ".doc", ".docx",
                      ".xls", ".xlsx", ".xml", ".htm", ".html", ".ini", ".log", ".db")
NOT_IMAGE_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini", "readme", "version"})


@dataclass(frozen=True)
class Roi:
    """A circle enclosing a finding, in original pixel coordinates, origin top-left."""

    x: float
    y: float
    radius: float
    severity: Label


@dataclass(frozen=True)
class LabelledImage:
    id: str
    path: Path
    label: Label
    patient_id: str
    laterality: Laterality | None = None
    view: str | None = None
    rois: tuple[Roi, ...] = field(default=())
    # The id of the image (the first by id) whose identical copy, byte for byte, this is;
    # None for an image that is the only one of its content. A copy is in the patient group
    # of its original (``load_dataset``).
    copy_of: str | None = None

    @property
    def class_index(self) -> int:
        return CLASSES.index(self.label)


def data_hash(images: Sequence[LabelledImage]) -> str:
    """sha256 over (id, label, file sha256) of every image: names the exact training data."""
    digest = hashlib.sha256()
    for image in sorted(images, key=lambda i: i.id):
        digest.update(f"{image.id}\t{image.label.value}\t{content_sha256(image.path)}\n"
                      .encode())
    return digest.hexdigest()


# {path: ((size, modification time), sha256)}: a file is hashed once per process (finding
# copies, the data hash, the digests kept with the validation predictions), again only
# when it changed.
_HASHED: dict[str, tuple[tuple[int, int], str]] = {}


def content_sha256(path: Path) -> str:
    """sha256 of the file's bytes, remembered for the process while the file is unchanged."""
    stat = Path(path).stat()
    stamp = (stat.st_size, stat.st_mtime_ns)
    known = _HASHED.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    digest = file_sha256(Path(path))
    _HASHED[str(path)] = (stamp, digest)
    return digest


def parse_label(value: str, where: str) -> Label:
    try:
        return Label(value.strip().lower())
    except ValueError:
        raise DatasetError(f"{where}: label {value!r} is not one of "
                           f"{', '.join(c.value for c in CLASSES)}.") from None


# The layouts, as metadata.json's training_data.layout records them.
LAYOUTS = {"mias": "a MIAS folder", "csv": "a CSV manifest", "class_folders": "a folder per class"}


def layout_of(path: Path) -> str:
    """Which of ``LAYOUTS`` ``path`` is, or ``DatasetError`` naming the accepted ones."""
    from models.mias import info_file

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist.")
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_dir() and info_file(path) is not None:  # Info.txt in any case
        return "mias"
    if path.is_dir() and class_folders(path):
        return "class_folders"
    raise DatasetError(
        f"{path} is none of the accepted layouts: a MIAS folder (Info.txt + mdbNNN images), "
        "a CSV manifest (path,label[,patient_id,laterality,view]) or a folder per class "
        "(normal/, benign/, malignant/).")


def load_dataset(path: Path) -> list[LabelledImage]:
    """Recognise the layout of ``path`` and return its images, sorted by id."""
    from models.mias import load_mias

    path = Path(path)
    layout = layout_of(path)
    loader = {"csv": load_manifest, "mias": load_mias, "class_folders": load_class_folders}
    images = loader[layout](path)
    if not images:
        raise DatasetError(f"{path} holds no labelled images.")
    copies = _identical_content(images)
    if layout == "class_folders":
        _require_one_class_per_image(copies, path)
    if layout != "mias":  # Info.txt's pairs name the patients
        images = _identified_from_headers(images)
    return sorted(_copies_grouped(images, copies), key=lambda i: i.id)


def without_patient(images: Sequence[LabelledImage]) -> int:
    """How many images have no known patient: each is then its own group in the splits
    (with its copies, if any)."""
    return sum(1 for image in images if image.patient_id in (image.id, image.copy_of))


def copies_warning(images: Sequence[LabelledImage]) -> str | None:
    """The warning that some of ``images`` are copies of others (identical content), with
    how they were split; None when there are none."""
    copies = [image for image in images if image.copy_of is not None]
    if not copies:
        return None
    return (f"{len(copies)} of {len(images)} images are copies of other images in the data "
            f"(identical content: {some([f'{c.id} = {c.copy_of}' for c in copies], 3)}): "
            "each copy is kept in its original's patient group, so no image is on both sides "
            "of a split, but the figures count every copy as an image. Remove the copies for "
            "figures that count each image once.")


# How each layout names patients, and how to name them where it does not: the advice
# must fit the layout the person gave (a folder per class has no manifest to add a column to).
_PATIENT_ADVICE = {
    "csv": "Add a patient_id column to the manifest.",
    "class_folders": "A folder per class names no patients (only a DICOM's PatientID does): "
                     "to give them, list the images in a CSV manifest "
                     "(path,label,patient_id) and train or evaluate on it.",
    "mias": "A MIAS folder's patients are inferred from Info.txt's numbering (mdb001 and "
            "mdb002 are one patient): to give them otherwise, list the images in a CSV "
            "manifest (path,label,patient_id) and train or evaluate on it.",
}


def unknown_patients_warning(images: Sequence[LabelledImage], layout: str) -> str | None:
    """The warning for ``images`` (read from a ``layout`` of ``LAYOUTS``) that some have
    no patient, with the advice that fits that layout; None when all have one."""
    unknown = without_patient(images)
    if not unknown:
        return None
    return (f"{unknown} of {len(images)} images have no patient identity (no patient_id "
            "column, no DICOM PatientID): each counts as its own patient, so splits and "
            "confidence intervals go by image (one patient's two breasts can fall on both "
            "sides of a split, making figures optimistic) and no breast is read against the "
            f"other. {_PATIENT_ADVICE[layout]}")


def left_out_warning(images: Sequence[LabelledImage], path: Path) -> str | None:
    """The warning that the data set at ``path`` lists images that are not among ``images``
    (those it loaded), naming them; None when there are none. Only a MIAS folder can: its
    Info.txt describes the whole database, of which a folder may hold part, while a
    manifest row without its file is refused."""
    if layout_of(path) != "mias":
        return None
    from models.mias import rows_without_image

    return rows_without_image(Path(path), images)


# Grouping DICOMs by patient needs only equality, not the PatientID: a hash salted afresh
# in each process groups them and can never be linked to a patient. The splits must not
# depend on that salt (a model's folds are drawn again in other processes: merge, bilateral
# heads), so each group is then named after its first image (``DICOM_PATIENT``), which is
# the same in every process and says nothing of the PatientID.
_SALT = os.urandom(16)
DICOM_PATIENT = "dicom-patient:"


def _grouping_key(patient_id: str) -> str:
    return "h-" + hashlib.sha256(_SALT + patient_id.encode()).hexdigest()[:16]


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def some(names: Sequence[str], shown: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more' for messages."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``, subfolders included, in path order. Linked folders are
    followed (once each: a link back up does not loop); hidden files and folders
    (``.DS_Store``, a Mac's AppleDouble ``._x.png``, ``.git/``) are not data."""
    found: list[Path] = []
    walked: set[str] = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            folders[:] = []
            continue
        walked.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(root, name) for name in names
                     if not name.startswith(".") and Path(root, name).is_file())
    return sorted(found)


def _is_image(path: Path) -> bool:
    """An image by its suffix, or by its first bytes whatever its name, as the readers
    know one (a PACS export names its DICOMs IM0001, or by their UID, 1.2.840...)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.name.lower() in NOT_IMAGE_NAMES:  # a DICOMDIR is DICOM, but no image
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_SIZE)
    except OSError:
        return False
    return any(reader.sniff(head) for reader in READERS)


def _is_no_image(path: Path) -> bool:
    """A file that folders of images carry and that is no image (notes, a thumbnail cache)."""
    name = path.name.lower()
    return name in NOT_IMAGE_NAMES or name.endswith(NOT_IMAGE_SUFFIXES)


def _identified_from_headers(images: Sequence[LabelledImage]) -> list[LabelledImage]:
    """Where a layout named no patient, laterality or view, a DICOM's header does; the
    patients a header names are grouped as ``DICOM_PATIENT`` and their first image's id."""
    out = []
    keys: dict[str, str] = {}  # in-process grouping key -> the first id of its images
    for image in images:
        if (image.patient_id != image.id and image.laterality and image.view) or not _is_dicom(
                image.path):
            out.append(image)
            continue
        try:
            header = read_header(image.path, pseudonymize=_grouping_key)
        except (InputError, OSError):
            out.append(image)  # unreadable: prepare() says why, with the other skips
            continue
        key = header.patient_pseudonym if image.patient_id == image.id else None
        if key:
            keys[key] = min(keys.get(key, image.id), image.id)
        out.append(dataclasses.replace(
            image, patient_id=key or image.patient_id,
            laterality=image.laterality or header.laterality,
            view=image.view or (header.view.value if header.view else None)))
    return [dataclasses.replace(image, patient_id=DICOM_PATIENT + keys[image.patient_id])
            if image.patient_id in keys else image for image in out]


def load_manifest(path: Path) -> list[LabelledImage]:
    """The images a CSV manifest lists. An image's id is its file's stem, as for the other
    layouts; where two listed files share a stem, their paths tell them apart
    (``_manifest_ids``)."""
    rows = [(line, _manifest_row(row, f"{path.name} line {line}", path.parent))
            for line, row in _manifest_rows(path)]
    ids = _manifest_ids([image_path for _, (_, image_path, _) in rows], path.parent)
    images: list[LabelledImage] = []
    seen: dict[Path, int] = {}
    for line, (cell, image_path, fields) in rows:
        if image_path.resolve() in seen:
            raise DatasetError(f"{path.name} line {line}: {cell} is already listed on line "
                               f"{seen[image_path.resolve()]}.")
        seen[image_path.resolve()] = line
        if not image_path.is_file():  # refused, not skipped: a subset would train silently
            raise DatasetError(f"{path.name} line {line}: {cell} not found ({image_path} is "
                               "not a file; relative paths are read from the manifest's "
                               "folder).")
        image_id = ids[len(images)]
        images.append(LabelledImage(id=image_id, path=image_path,
                                    patient_id=fields.pop("patient_id") or image_id, **fields))
    _require_unique_ids(images, path)
    return images


def _manifest_ids(paths: Sequence[Path], folder: Path) -> list[str]:
    """The id of each of ``paths`` (files a manifest in ``folder`` lists): its stem, unless
    another listed file has that stem; then, where all the files of that stem lie in the
    manifest's folder, the path inside it (``a/IM0001``), else the fewest last folders that
    tell them apart (``P1/IM0001``); without the suffix. Never the whole path as written:
    ids travel with the model (its validation predictions, its card), and the folders
    above the data are nobody's business (a folder name at a site is often a patient's)."""
    full = [Path(os.path.abspath(p)).with_suffix("") for p in paths]
    base = Path(os.path.abspath(folder))
    by_stem: dict[str, list[int]] = {}
    for n, image_path in enumerate(full):
        by_stem.setdefault(image_path.name, []).append(n)
    ids = [image_path.name for image_path in full]
    for same in by_stem.values():
        if len(same) < 2:
            continue
        if all(full[n].is_relative_to(base) for n in same):
            for n in same:
                ids[n] = full[n].relative_to(base).as_posix()
            continue
        parts = [full[n].parts[1:] for n in same]  # without the root (/, C:\\)
        last = 2
        while last < max(map(len, parts)) and len({p[-last:] for p in parts}) < len(parts):
            last += 1
        for n, inside in zip(same, parts, strict=True):
            ids[n] = "/".join(inside[-last:])
    return ids


def _manifest_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: value}) of each row of the manifest, read as ``mammo submit
    --manifest`` reads one: UTF-8 (a spreadsheet's byte-order mark is not part of the first
    column's name), blank rows and rows of empty values skipped, a quote left open, a value
    too many, a column that is none of the manifest's (a misspelt ``lateralty`` would turn
    its values off without a word) or one named twice refused."""
    try:
        columns, rows = read_rows(path)
        if not {"path", "label"} <= set(columns):
            raise DatasetError(f"{path.name} needs the columns path,label "
                               f"({header_found(columns)}){delimiter_hint(columns)}")
        check_columns(path, columns, rows)
    except ManifestError as exc:  # what is wrong is the same whichever command reads it
        raise DatasetError(str(exc)) from exc
    return [(line, {name: value.strip() for name, value in zip(columns, values, strict=False)
                    if name}) for line, values in rows]


def _manifest_row(row: dict[str, str], where: str,
                  folder: Path) -> tuple[str, Path, dict[str, Any]]:
    """(the path cell, the image's path, its other fields) of one manifest row."""
    cell = row.get("path", "")
    if not cell:
        raise DatasetError(f"{where}: the path is empty.")
    image_path = Path(cell)
    if not image_path.is_absolute():
        image_path = folder / image_path
    laterality = None
    if row.get("laterality"):
        laterality = Laterality.parse(row["laterality"])
        if laterality is None:
            raise DatasetError(f"{where}: laterality {row['laterality']!r} is not L, R, B "
                               "(or left, right, both), or empty.")
    return cell, image_path, {
        "label": parse_label(row.get("label", ""), where),
        "patient_id": row.get("patient_id") or "", "laterality": laterality,
        "view": _manifest_view(row.get("view", ""), where)}


def _manifest_view(text: str, where: str) -> str | None:
    """The view as a DICOM View Position names it (``mlo`` is MLO: left and right images
    pair by view, so ``mlo`` beside ``MLO`` would part a pair); None when empty."""
    if not text:
        return None
    view = View.parse(text)
    if view is None or (view is View.OTHER and text.upper() != View.OTHER):
        raise DatasetError(f"{where}: view {text!r} is not one of {', '.join(View)} "
                           "(any case), or empty.")
    return view.value


def class_folders(path: Path) -> list[tuple[Label, Path]]:
    """The class folders directly under ``path`` (``normal/``, ``Benign/``...: any case)."""
    by_name = {c.value: c for c in CLASSES}
    return sorted(((by_name[child.name.lower()], child) for child in path.iterdir()
                   if child.is_dir() and child.name.lower() in by_name),
                  key=lambda found: (found[0].value, found[1].name))


def load_class_folders(path: Path) -> list[LabelledImage]:
    """Every image under each class folder, subfolders included; an image's id is its
    class and its path inside the class folder, without the suffix (``benign/a/mdb001``;
    an image known by its content, named without an image suffix, keeps its whole name:
    ``benign/IM0001``, ``benign/1.2.840.5``).
    Hidden files, notes and the like (``NOT_IMAGE_SUFFIXES``) are passed over; any other
    file is refused, as is an image beside the class folders: the data set is read whole,
    never in part."""
    images = []
    others: list[Path] = []
    refused: list[Path] = []
    folders = class_folders(path)
    _require_only_class_folders(path)
    for label, folder in folders:
        for image_path in files_below(folder):
            if not _is_image(image_path):
                others.append(image_path)
                if not _is_no_image(image_path):
                    refused.append(image_path)
                continue
            inside = image_path.relative_to(folder)
            if image_path.suffix.lower() in IMAGE_SUFFIXES:
                inside = inside.with_suffix("")
            image_id = f"{label.value}/{inside.as_posix()}"
            images.append(LabelledImage(id=image_id, path=image_path, label=label,
                                        patient_id=image_id))
    if not images:
        named = ", ".join(f"{f.name}/" for _, f in folders)
        found = (f"{len(others)} other files (for example {others[0].relative_to(path)})"
                 if others else "no files")
        raise DatasetError(
            f"{path}: the class folders {named} hold no images ({', '.join(IMAGE_SUFFIXES)}); "
            f"found {found}.")
    if refused:
        raise DatasetError(
            f"{path}: {len(refused)} file(s) in the class folders are not images this reads "
            f"({some([p.relative_to(path).as_posix() for p in refused])}): an image is "
            f"{', '.join(IMAGE_SUFFIXES)}, or a DICOM, PNG, JPEG, TIFF or PGM file whatever "
            "its name. Convert them to one of these, or move them out of the class folders; "
            "a data set is read whole, never in part.")
    _require_unique_ids(images, path)
    return images


def _require_only_class_folders(path: Path) -> None:
    """Refuse a folder beside the class folders (a misspelt ``malignat/``): its images would
    be left out without a word, leaving their class short or empty; and an image beside
    them, which no folder gives a class. Hidden folders (``.git``...) are not data."""
    names = [c.value for c in CLASSES]
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name.lower() not in names:
            raise DatasetError(
                f"{child}/ is not a class folder: a folder per class holds only "
                f"{', '.join(f'{n}/' for n in names)} (any case); rename or move it.")
    if beside := [child.name for child in sorted(path.iterdir())
                  if child.is_file() and not child.name.startswith(".") and _is_image(child)]:
        raise DatasetError(
            f"{len(beside)} image(s) in {path} lie beside the class folders, in none of them "
            f"({some(beside)}), so their labels are unknown: move each into "
            f"{', '.join(f'{n}/' for n in names)}, or out of {path}.")


def _identical_content(images: Sequence[LabelledImage]) -> list[list[LabelledImage]]:
    """The sets of two or more images with identical content (the same bytes), each in id
    order, in the order of their first ids. Only files of equal size are hashed."""
    by_size: dict[int, list[LabelledImage]] = {}
    for image in images:
        by_size.setdefault(image.path.stat().st_size, []).append(image)
    found: list[list[LabelledImage]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_content: dict[str, list[LabelledImage]] = {}
        for image in same_size:
            by_content.setdefault(content_sha256(image.path), []).append(image)
        found.extend(sorted(same, key=lambda i: i.id) for same in by_content.values()
                     if len(same) > 1)
    return sorted(found, key=lambda same: same[0].id)


def _require_one_class_per_image(copies: Sequence[Sequence[LabelledImage]],
                                 source: Path) -> None:
    """Refuse one image (identical bytes, ``_identical_content``'s ``copies``) filed under
    two classes: it would count twice, with opposite truths."""
    for same in copies:
        other = same[0]
        for image in same[1:]:
            if other.label != image.label:
                raise DatasetError(
                    f"{other.path.relative_to(source)} and {image.path.relative_to(source)} "
                    f"are the same image (identical content) under two classes, "
                    f"{other.label.value} and {image.label.value}: keep it in the one class "
                    f"it belongs to.")


def _copies_grouped(images: Sequence[LabelledImage],
                    copies: Sequence[Sequence[LabelledImage]]) -> list[LabelledImage]:
    """``images`` with each set of ``copies`` (identical content) in one patient group, so
    that no copy falls on the other side of a split from its original: the patients of
    copies are one group, named by its least known patient, else by its first image's id
    (copies of no known patient). Each copy but the first by id records ``copy_of``."""
    if not copies:
        return list(images)
    by_id = {image.id: image for image in images}
    parent: dict[str, str] = {}

    def root(patient: str) -> str:
        while parent.get(patient, patient) != patient:
            patient = parent[patient]
        return patient

    copy_of: dict[str, str] = {}
    for same in copies:
        first = by_id[same[0].id]
        for image in same[1:]:
            copy_of[image.id] = first.id
            a, b = root(first.patient_id), root(by_id[image.id].patient_id)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[LabelledImage]] = {}
    for image in images:
        members.setdefault(root(image.patient_id), []).append(image)
    names: dict[str, str] = {}
    for group, found in members.items():
        known = [i.patient_id for i in found if i.patient_id != i.id]
        names[group] = min(known) if known else min(i.id for i in found)
    return [dataclasses.replace(image, patient_id=names[root(image.patient_id)],
                                copy_of=copy_of.get(image.id)) for image in images]


def _require_unique_ids(images: Sequence[LabelledImage], source: Path) -> None:
    seen: set[str] = set()
    for image in images:
        if image.id in seen:
            raise DatasetError(f"{source.name} lists two images named {image.id!r}; "
                               "image file names must be unique.")
        seen.add(image.id)
