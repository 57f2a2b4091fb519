"""Find a model directory and read its metadata, without importing TensorFlow.

A model lives in a directory holding ``model.keras`` and ``metadata.json``; shipped models sit
under ``models/<name>/<version>/``, and shipped alternatives, which the name ``default``
never picks, under ``models/alternatives/<version>/``. ``MAMMO_MODEL`` (or ``--model``, or a
command's REF) is either such a directory or the name of a shipped model (its highest
version wins, unless ``name/version``, or ``name:version`` as results print it, is given).
A name has no path separator and is looked up under ``models/`` only: a folder of the same
name in the working directory is reached as a path (``./default``), never by the bare name.
NAME:VERSION also finds a shipped alternative whose metadata names it, and (through
``models.activation.resolve_ref``, which has the database) a version registered there.

``metadata.json`` is sealed as ``model.keras`` is: ``sha256`` names the weights, and
``metadata_seal`` is a sha256 over the metadata that changes what the model outputs or how
its results are labelled (``SEALED_KEYS``, and the bilateral head), written when the model
is written. Figures recorded later (benchmarks, re-runs, the card) are left out of it, so
recording them keeps it valid. A model written before seals existed (or by another tool)
has none: it is accepted, and ``mammo models show`` says its metadata is unchecked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.enums import CLASSES
from shared.errors import (
    ConfigurationError,
    ModelIntegrityError,
    ModelNotFoundError,
    UserFacingError,
)
from shared.filehash import file_sha256

MODELS_ROOT = Path(__file__).resolve().parent
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
REQUIRED_KEYS = ("name", "version", "classes", "input_size", "preprocessing_version", "sha256")
SEAL_KEY = "metadata_seal"
# What inference, exam results or the results' labelling read from metadata.json (the
# bilateral head's scores and weights are added by ``metadata_seal``).
SEALED_KEYS = ("name", "version", "classes", "input_size", "preprocessing_version", "sha256",
               "outputs", "patch", "heatmap_stride", "pixel_size_mm", "tta_flips", "head")
SEAL_PREFIX = "sha256-v1:"
UNSEALED = ("metadata not sealed (written before seals, or by another tool): its head, "
            "input size and other settings are not checked")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    directory: Path
    sha256: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    preprocessing_version: str
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def _version_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in path.name.replace("-", ".").split("."))


def is_path(ref: str) -> bool:
    """Whether ``ref`` is a path rather than a model's name: it holds a path separator or
    starts with ``~`` (``./default`` is the folder ``default``; ``default`` is the model)."""
    return ref.startswith("~") or ref in (".", "..") or any(
        sep in ref for sep in {"/", os.sep, os.altsep or "/"})


def name_version(ref: str) -> tuple[str, str] | None:
    """(NAME, VERSION) when ``ref`` is written NAME:VERSION (as results print it) or
    NAME/VERSION, else None."""
    for sep in (":", "/"):
        name, found, version = ref.partition(sep)
        parts = (name, version)
        if found and all(p and p not in (".", "..") and not is_path(p) and ":" not in p
                         and not p.startswith("~") for p in parts):
            return name, version
    return None


def _shipped(root: Path, *parts: str) -> list[Path]:
    """The shipped model NAME (its highest version) or NAME/VERSION under ``root``."""
    shipped = root.joinpath(*parts)
    if (shipped / METADATA_FILE).is_file():
        return [shipped]
    if shipped.is_dir():
        versions = [p for p in shipped.iterdir() if (p / METADATA_FILE).is_file()]
        return sorted(versions, key=_version_key, reverse=True)[:1]
    return []


def _candidates(ref: str, root: Path) -> list[Path]:
    """Where ``ref`` points. A name (no path separator: NAME, or NAME:VERSION) is looked up
    under ``root`` only, never in the working directory, so a folder that happens to share
    a shipped model's name cannot shadow it. A path is that path; NAME/VERSION, which reads
    like a relative path, is the shipped model when no such path exists (``./NAME/VERSION``
    is only ever the path)."""
    named = name_version(ref)
    if not is_path(ref):
        if ":" in ref:
            return _shipped_version(root, *named) if named else []
        return _shipped(root, ref) if ref.strip() else []
    as_path = Path(ref).expanduser()
    if as_path.is_file() and as_path.name == MODEL_FILE:
        return [as_path.parent]
    if as_path.is_dir():
        return [as_path]
    return _shipped_version(root, *named) if named else []


def _shipped_version(root: Path, name: str, version: str) -> list[Path]:
    """NAME VERSION under ``root``: ``root/NAME/VERSION``, else the shipped directory whose
    metadata names it (an alternative under ``root/alternatives/``), as `models list` shows
    it."""
    return _shipped(root, name, version) or [
        s.directory for s in shipped_models(root) if (s.name, s.version) == (name, version)][:1]


def locate(ref: str, root: Path = MODELS_ROOT) -> Path | None:
    """The directory ``ref`` names among paths and shipped models, or None."""
    found = _candidates(ref, root)
    return found[0] if found else None


def resolve_model(ref: str, *, root: Path = MODELS_ROOT,
                  named_by: str = "MAMMO_MODEL") -> ModelSpec:
    """Return the spec of the model ``ref`` names, or say clearly how to provide one.

    ``named_by`` is where ``ref`` came from (the setting, an argument, a flag), so that a
    message blames what the person actually typed."""
    found = _candidates(ref, root)
    hint = (f"Give {named_by} a directory holding model.keras and metadata.json (for example "
            "one written by `mammo train`), or the name of a model shipped under "
            f"{root} (NAME, NAME/VERSION or NAME:VERSION; NAME:VERSION also names a version "
            "`mammo models list` shows as registered).")
    if not found:
        raise ModelNotFoundError(f"No model found for {named_by}={ref!r}. {hint}")
    directory = found[0]
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file() or not (directory / MODEL_FILE).is_file():
        raise ModelNotFoundError(
            f"{directory} does not hold both {MODEL_FILE} and {METADATA_FILE}. {hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{meta_path} is not valid JSON: {exc}") from exc
    fields = _validated(meta, meta_path)
    return ModelSpec(directory=directory, metadata=meta, **fields)


def _text(meta: dict[str, Any], key: str, where: Path) -> str:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ModelIntegrityError(f"{where}: {key} must be a non-empty string "
                                  f"(found {value!r}).")
    return str(value)


def _validated(meta: Any, where: Path) -> dict[str, Any]:
    """ModelSpec's fields from ``meta``, or a ``ModelIntegrityError`` naming the bad value."""
    if not isinstance(meta, dict):
        raise ModelIntegrityError(f"{where} must hold a JSON object, not a "
                                  f"{type(meta).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelIntegrityError(f"{where} lacks required keys: {', '.join(missing)}")
    raw_classes = meta["classes"]
    classes = (tuple(str(c) for c in raw_classes) if isinstance(raw_classes, list)
               else (str(raw_classes),))
    if classes != tuple(c.value for c in CLASSES):
        raise ModelIntegrityError(
            f"{where} lists classes {raw_classes!r}; this pipeline needs "
            f"{[c.value for c in CLASSES]} in that order.")
    size = meta["input_size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ModelIntegrityError(f"{where}: input_size must be [HEIGHT, WIDTH], two positive "
                                  f"integers (found {size!r}).")
    sha = meta["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(
            c not in "0123456789abcdef" for c in sha.lower()):
        raise ModelIntegrityError(f"{where}: sha256 must be 64 hexadecimal digits "
                                  f"(found {sha!r}).")
    bilateral = meta.get("bilateral")
    if bilateral:
        from models.bilateral import bilateral_head

        try:
            bilateral_head(meta)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ModelIntegrityError(
                f"{where}: bilateral must be null or {{\"scores\": [...], \"head\": {{...}}}} "
                f"as `mammo train` writes it ({type(exc).__name__}: {exc}).") from exc
    return {"name": _text(meta, "name", where), "version": _text(meta, "version", where),
            "sha256": sha.lower(), "classes": classes, "input_size": (size[0], size[1]),
            "preprocessing_version": _text(meta, "preprocessing_version", where)}


def metadata_seal(meta: dict[str, Any]) -> str:
    """The seal of ``meta``: a sha256 over its ``SEALED_KEYS`` and its bilateral head, as
    JSON (so a value reads the same in memory and back from the file)."""
    sealed = {k: meta.get(k) for k in SEALED_KEYS}
    bilateral = meta.get("bilateral")
    sealed["bilateral"] = ({"scores": bilateral.get("scores"), "head": bilateral.get("head")}
                           if isinstance(bilateral, dict) else bilateral)
    text = json.dumps(json.loads(json.dumps(sealed)), sort_keys=True, separators=(",", ":"))
    return SEAL_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def sealed(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its seal, placed right after ``sha256`` (replacing any earlier one)."""
    seal = metadata_seal(meta)
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key != SEAL_KEY:
            out[key] = value
        if key == "sha256":
            out[SEAL_KEY] = seal
    out.setdefault(SEAL_KEY, seal)
    return out


def is_sealed(spec: ModelSpec) -> bool:
    return SEAL_KEY in spec.metadata


def verify_model(spec: ModelSpec, *, preprocessing_version: str) -> None:
    """Refuse a model whose bytes, sealed metadata or preprocessing differ from what its
    metadata promises. A model without a seal is accepted (see the module docstring)."""
    actual = file_sha256(spec.model_path)
    if actual != spec.sha256:
        raise ModelIntegrityError(
            f"{spec.model_path} has sha256 {actual[:12]}..., but its metadata records "
            f"{spec.sha256[:12]}...: the file was changed or corrupted. Re-copy or retrain it.")
    seal = metadata_seal(spec.metadata)
    recorded, whose = {spec.metadata.get(SEAL_KEY)}, SEAL_KEY
    if spec.metadata.get(SEAL_KEY) is None:
        # Shipped models are all sealed: an unsealed copy of one of their model.keras files
        # must carry one of their metadata, so stripping the seal does not pass an edit.
        whose = "that of the shipped models with these weights"
        recorded = {s.metadata[SEAL_KEY] for s in shipped_models()
                    if s.sha256 == spec.sha256 and SEAL_KEY in s.metadata}
        if not recorded:
            log.warning("%s: %s", spec.directory / METADATA_FILE, UNSEALED)
    if recorded and seal not in recorded:
        raise ModelIntegrityError(
            f"{spec.directory / METADATA_FILE} does not match its seal ({whose}): a "
            "setting that changes the model's outputs (input size, head, bilateral head, "
            "name, version...) was changed or corrupted. Re-copy or retrain it.")
    check_model_file(spec)
    if spec.preprocessing_version != preprocessing_version:
        raise ModelIntegrityError(
            f"Model {spec.name} {spec.version} was trained with preprocessing version "
            f"{spec.preprocessing_version}, but this code preprocesses with version "
            f"{preprocessing_version}. Retrain the model, or install the matching release.")


def integrity_problem(spec: ModelSpec) -> str | None:
    """Why ``spec`` would be refused at load (``verify_model``: its file's sha256, its seal,
    its preprocessing version; hashing, no TensorFlow) as one ``broken: ...`` line, or None.
    For listings, which show a broken model instead of failing."""
    from shared.imaging.preprocess import PREPROCESSING_VERSION

    try:
        verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    except UserFacingError as exc:
        return f"broken: {exc}"
    return None


def _input_shapes(config: Any) -> list[list[Any]]:
    """The batch shapes of the InputLayers in a Keras ``config.json`` (any nesting)."""
    found: list[list[Any]] = []
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer":
            inner = config.get("config") or {}
            shape = inner.get("batch_shape") or inner.get("batch_input_shape")
            if isinstance(shape, list):
                found.append(shape)
        for value in config.values():
            found.extend(_input_shapes(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_input_shapes(value))
    return found


def check_model_file(spec: ModelSpec) -> None:
    """Refuse, without TensorFlow, a model.keras that Keras could not load as this model:
    not a .keras (zip) file, no config.json in it, or an input other than ``input_size``."""
    path = spec.model_path
    fix = "Re-copy or retrain it."
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        reason = ("not a Keras .keras file (a zip archive)"
                  if isinstance(exc, zipfile.BadZipFile) else f"unreadable as a Keras model "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        raise ModelIntegrityError(f"{path} is {reason}. {fix}") from exc
    height, width = spec.input_size
    for shape in _input_shapes(config):
        if len(shape) == 4 and (shape[1], shape[2]) != (height, width) and None not in shape[1:3]:
            raise ModelIntegrityError(
                f"{path} takes {shape[1]}x{shape[2]} images, but {METADATA_FILE} gives "
                f"input_size {height}x{width}: the metadata does not describe this model. "
                f"{fix}")


# A model's name and version are folder names (OUTPUT/NAME/VERSION) and are printed as
# NAME:VERSION: one path component each, from a set no shell, path or reference parses.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def folder_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a model's name or version, or None."""
    if FOLDER_NAME.fullmatch(value) and ".." not in value:
        return None
    return (f"{value!r} must be one folder name: 1 to 64 letters, digits, '.', '_', '-' or "
            "'+', starting with a letter or digit, without '..' (for example default or 1.8.1).")


def new_model_dir(output: Path, name: str, version: str) -> Path:
    """``output/<name>/<version>``, which must not exist yet (a run never overwrites a model:
    under models/ it may be the one every worker uses) and must be creatable: the folders
    on its way that exist are folders, and the deepest of them takes a new folder. Checked
    before any work starts; nothing is left behind. ``name`` and ``version`` must be folder
    names (``folder_name_problem``), so the model lands under ``output``."""
    for value, what in ((name, "the name"), (version, "the version")):
        if (problem := folder_name_problem(value)) is not None:
            raise ConfigurationError(f"{what} {problem}")
    target = output / name / version
    if target.exists():
        raise ConfigurationError(f"{target} exists: choose another --version or --output.")
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(f"{existing} is a file, not a folder: choose another --output "
                                 "(the model is written to OUTPUT/NAME/VERSION/).")
    try:
        Path(tempfile.mkdtemp(prefix=".mammo-write-check-", dir=existing)).rmdir()
    except OSError as exc:
        raise ConfigurationError(f"cannot write the model under {existing} ({exc.strerror}): "
                                 "choose another --output.") from exc
    return target


def write_model_dir(
    directory: Path, *, name: str, version: str, input_size: tuple[int, int],
    preprocessing_version: str, extra: dict[str, Any] | None = None,
) -> ModelSpec:
    """Write metadata.json beside an already saved model.keras, sealing it with its sha256
    and the metadata with its seal."""
    meta: dict[str, Any] = {
        "name": name, "version": version, "classes": [c.value for c in CLASSES],
        "input_size": list(input_size), "preprocessing_version": preprocessing_version,
        "sha256": file_sha256(directory / MODEL_FILE),
    }
    meta.update(extra or {})
    (directory / METADATA_FILE).write_text(json.dumps(sealed(meta), indent=2) + "\n",
                                           encoding="utf-8")
    return resolve_model(str(directory))


def shipped_models(root: Path = MODELS_ROOT) -> list[ModelSpec]:
    """Every ``<name>/<version>/`` under ``root`` with readable metadata, newest first."""
    found: list[ModelSpec] = []
    for meta in sorted(root.glob(f"*/*/{METADATA_FILE}")):
        try:
            found.append(resolve_model(str(meta.parent), root=root))
        except (ModelNotFoundError, ModelIntegrityError):
            continue  # a half-written directory is not a model; `models show` explains it
    return sorted(found, key=lambda s: (s.name, _version_key(s.directory)), reverse=True)
