"""Which model workers run when ``MAMMO_MODEL`` is not set: the database says.

``mammo models activate`` registers a model version (name, version, sha256, path) and marks
it active; every worker sharing the database then loads exactly that directory (like the
images' paths, model paths must be shared). A machine that lacks that directory but ships
the very same model (name, version, and a model.keras whose bytes hash to the registered
sha256: another host, a container with the package in site-packages) loads its own copy,
and logs which. Where the directory is missing with no such copy, or no longer holds the
activated model, every process refuses (exit 5) rather than score with another model.
An explicit ``MAMMO_MODEL`` always wins, even ``MAMMO_MODEL=default`` (the shipped default,
as ``--model default`` is), and without an activation the shipped default is used.
Either way, a model whose name and version another model's weights hold, or that has the
weights of the model registered under its name and version but other sealed settings (a
bilateral head, input size...: another ``metadata_seal``), is refused for scoring as for
activation (``identity_clash``): results and exam results name a model by its name and
version. Each registered row keeps the seal of its model.

Activations are serialised (a PostgreSQL advisory lock; SQLite's write lock): two at once
leave the later one active alone.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from sqlalchemy import false, select, text, update
from sqlalchemy.orm import Session

from models.bilateral import bilateral_head
from models.registry import (
    SEAL_PREFIX,
    ModelSpec,
    folder_name_problem,
    locate,
    metadata_seal,
    name_version,
    resolve_model,
    shipped_models,
    verify_model,
)
from shared.config import Settings
from shared.db.schema import ModelVersion
from shared.db.upsert import upsert_returning_id
from shared.errors import ModelIntegrityError, ModelNotFoundError
from shared.filehash import file_sha256

log = logging.getLogger(__name__)

IDENTITY = ("name", "version", "sha256")
# What a row records of its model's sealed metadata: one name, version, sha256 and seal
# always has the same. A row registered before seals were kept takes them from the first
# model registered or activated under it since.
SEALED_COLUMNS = ("metadata_seal", "preprocessing_version", "classes", "input_size",
                  "bilateral")
# PostgreSQL advisory lock held by an activation until it commits (any constant works; it
# differs from shared.db.migration_connection's).
PG_ACTIVATION_LOCK = 7_314_160
# What a process whose activated model is refused says to do.
ACTIVATE_ANOTHER = (" `mammo models activate` another model (`mammo models activate default`: "
                    "the shipped one)")


def _row(spec: ModelSpec) -> dict[str, object]:
    return {
        "name": spec.name, "version": spec.version, "sha256": spec.sha256,
        "preprocessing_version": spec.preprocessing_version, "classes": list(spec.classes),
        "input_size": list(spec.input_size), "path": str(spec.directory.resolve()),
        "bilateral": None if (head := bilateral_head(spec.metadata)) is None
        else head.to_config(),
        "metadata_seal": metadata_seal(spec.metadata),
    }


def register(session: Session, spec: ModelSpec) -> int:
    """The model version's row id, inserting the row on first use (a worker running a copy
    elsewhere finds the same row and leaves its path alone). A model whose name and version
    another model's weights hold, or whose row records another seal, is refused
    (``identity_clash``), also when a racing process registered that row meanwhile.
    Caller commits."""
    _own_identity(session, spec, named_by="this model")
    row_id = upsert_returning_id(session, ModelVersion, _row(spec), conflict=IDENTITY)
    _check_seal(session, spec, row_id)
    return row_id


def activate(session: Session, spec: ModelSpec) -> int:
    """Make ``spec``'s directory the one active model; returns its row id. Caller commits.

    One activation at a time: a second one waits for this one's commit, then sees its row
    and leaves it inactive (two at once left both active on PostgreSQL, each update blind
    to the other's new row). The row of an identity registered before (from another
    directory, a copy) is pointed at this directory: activation names exactly the
    directory it was given."""
    _one_activation_at_a_time(session)
    row_id = register(session, spec)
    session.execute(update(ModelVersion).where(ModelVersion.id == row_id)
                    .values(path=str(spec.directory.resolve())))
    session.execute(update(ModelVersion).values(active=ModelVersion.id == row_id))
    return row_id


def _one_activation_at_a_time(session: Session) -> None:
    """Hold the activation lock until the transaction ends, taken before anything is read:
    PostgreSQL's advisory lock; on SQLite, its write lock (an update of no row), which
    holds back every other writer as well."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_ACTIVATION_LOCK})
    else:
        session.execute(update(ModelVersion).where(false()).values(active=ModelVersion.active),
                        execution_options={"synchronize_session": False})


def _check_seal(session: Session, spec: ModelSpec, row_id: int) -> None:
    """Refuse ``spec`` when its row (just inserted or found) records another model's seal:
    checked after the insert, so a process that registered the row since ``spec``'s
    identity check is caught too. A row without one (registered before seals were kept, or
    under an older kind of seal) takes ``spec``'s, with the settings it seals; so does a
    row of a shipped model, which ``identity_clash`` lets no copy with another seal take."""
    mine = _row(spec)
    stored = session.execute(select(*(getattr(ModelVersion, c) for c in SEALED_COLUMNS))
                             .where(ModelVersion.id == row_id)).one()._asdict()
    if stored["metadata_seal"] == mine["metadata_seal"]:
        return
    if _sealed_otherwise(stored["metadata_seal"], spec) and not _is_shipped(spec):
        raise ModelNotFoundError(
            f"this model is refused: {_other_settings(spec, [_registered_at(session, row_id)])}")
    changed = [c for c in SEALED_COLUMNS[1:] if _plain(stored[c]) != _plain(mine[c])]
    if changed:
        log.warning("%s %s (sha256 %s) was registered before its metadata seal was kept, "
                    "with other %s; it now records those of %s", spec.name, spec.version,
                    spec.sha256[:12], ", ".join(changed), spec.directory)
    session.execute(update(ModelVersion).where(ModelVersion.id == row_id)
                    .values({c: mine[c] for c in SEALED_COLUMNS}),
                    execution_options={"synchronize_session": False})


def _sealed_otherwise(stored: str | None, spec: ModelSpec) -> bool:
    """Whether a row's ``stored`` seal, of this kind of seal, is not ``spec``'s."""
    return (stored is not None and stored.startswith(SEAL_PREFIX)
            and stored != metadata_seal(spec.metadata))


def _plain(value: object) -> object:
    return json.loads(json.dumps(value))


def _registered_at(session: Session, row_id: int) -> str:
    path = session.execute(select(ModelVersion.path).where(ModelVersion.id == row_id)).scalar()
    return f"the registered {path}"


def _is_shipped(spec: ModelSpec) -> bool:
    """Whether ``spec`` is a shipped model itself: name, version, weights and seal."""
    seal = metadata_seal(spec.metadata)
    return any((s.name, s.version, s.sha256) == (spec.name, spec.version, spec.sha256)
               and metadata_seal(s.metadata) == seal for s in shipped_models())


def _shipped_namesakes(name: str, version: str) -> dict[str, str]:
    return {spec.sha256: f"the shipped {spec.directory} (sha256 {spec.sha256[:12]})"
            for spec in shipped_models() if (spec.name, spec.version) == (name, version)}


def namesakes(session: Session | None, name: str, version: str) -> dict[str, str]:
    """The models called ``name`` ``version``, shipped ones and (with ``session``) versions
    registered in the database: each sha256 with where that model is, for a message."""
    found = _shipped_namesakes(name, version)
    if session is not None:
        for row in session.scalars(select(ModelVersion).where(
                ModelVersion.name == name, ModelVersion.version == version)
                .order_by(ModelVersion.id)):
            found.setdefault(row.sha256, f"the registered {row.path} (sha256 {row.sha256[:12]})")
    return found


def identity_clash(session: Session, spec: ModelSpec, *,
                   for_scoring: bool = False) -> str | None:
    """Why activating or scoring with ``spec`` would give two models one name and version
    (results, reports and `mammo rescore` name a model by NAME VERSION), or None: other
    weights under its name and version, or the same weights with other sealed settings (a
    bilateral head, an input size...: exam results read with two heads under one name).
    Activating (not ``for_scoring``), also a name or version that is not one folder name,
    as `mammo train` requires: NAME:VERSION could not name it afterwards.

    The shipped model itself, or the only model registered under its name and version, adds
    no ambiguity, so the shipped default, or a model activated before, can always be
    activated (rolled back to). Being registered is not enough: a database from before
    scoring refused namesakes may hold two models under one name and version."""
    if not for_scoring and (bad := _name_problem(spec)) is not None:
        return bad
    if _is_shipped(spec):
        return None
    others = [where for sha256, where in namesakes(session, spec.name, spec.version).items()
              if sha256 != spec.sha256]
    if others:
        return (f"{spec.directory} holds {spec.name} {spec.version} (sha256 "
                f"{spec.sha256[:12]}), but {' and '.join(others)} already has that name and "
                "version with other weights, and results could not tell the two apart. "
                f"{_another_version(spec)}")
    same_weights = [f"the shipped {s.directory}" for s in shipped_models()
                    if (s.name, s.version, s.sha256) == (spec.name, spec.version, spec.sha256)]
    row = session.scalars(select(ModelVersion).where(
        ModelVersion.name == spec.name, ModelVersion.version == spec.version,
        ModelVersion.sha256 == spec.sha256)).first()
    if row is not None and _sealed_otherwise(row.metadata_seal, spec):
        same_weights.append(f"the registered {row.path}")
    return _other_settings(spec, same_weights) if same_weights else None


def _other_settings(spec: ModelSpec, where: list[str]) -> str:
    return (f"{spec.directory} holds {spec.name} {spec.version} with the weights (sha256 "
            f"{spec.sha256[:12]}) of {' and '.join(where)}, but other sealed settings (its "
            "metadata seal differs: a bilateral head, head, input size...), and exam results "
            "read with the two could not be told apart. "
            f"{_another_version(spec, same_weights=True)}")


def _another_version(spec: ModelSpec, *, same_weights: bool = False) -> str:
    """How to get a model of its own: the command that wrote ``spec`` with ``--version
    NEW``: for other weights its training; for the same weights with another head, the
    derivation that fitted the head (`mammo models bilateral`), where it says so."""
    derived = (spec.metadata.get("derived_from") or {}).get("command") if same_weights else None
    command = str(derived or (spec.metadata.get("training") or {}).get("command")
                  or "mammo train DATA")
    verb = "Write it again" if derived else "Train it again"
    return (f"{verb} under another version (`{_without_version(command)} --version NEW`) "
            "and use that one: a renamed copy is refused, as the name and version are sealed "
            "in its metadata.json.")


def _name_problem(spec: ModelSpec) -> str | None:
    for value, what in ((spec.name, "name"), (spec.version, "version")):
        if (problem := folder_name_problem(value)) is not None:
            return (f"{spec.directory} holds {spec.name!r} {spec.version!r}, which results "
                    f"could not name as NAME:VERSION and `mammo train` refuses: the {what} "
                    f"{problem} Write it again under another {what}.")
    return None


def _own_identity(session: Session, spec: ModelSpec, *, named_by: str,
                  fix: str = "") -> ModelSpec:
    """``spec``, refused (no usable model) when scoring with it would give two models one
    name and version (``identity_clash``), before it is loaded, let alone registered."""
    if (clash := identity_clash(session, spec, for_scoring=True)) is not None:
        raise ModelNotFoundError(f"{named_by} is refused: {clash}{fix}")
    return spec


def _without_version(command: str) -> str:
    """``command`` (as `mammo train` records it, shell-quoted) without its own
    ``--version X`` / ``--version=X``, so that the ``--version NEW`` a message appends is
    the only one."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command  # not quoted as `mammo train` records it: shown as it is
    kept: list[str] = []
    words_iter = iter(words)
    for word in words_iter:
        if word == "--":  # the rest are arguments, never options
            kept += [word, *words_iter]
        elif word == "--version":
            next(words_iter, None)
        elif not word.startswith("--version="):
            kept.append(word)
    return shlex.join(kept)


def describe(session: Session, spec: ModelSpec) -> str:
    """``NAME VERSION`` as results print it, with the sha256 prefix where another model
    shares that name and version."""
    shared = set(namesakes(session, spec.name, spec.version)) - {spec.sha256}
    return f"{spec.name} {spec.version}" + (f" (sha256 {spec.sha256[:12]})" if shared else "")


def active_version(session: Session) -> ModelVersion | None:
    """The activated model version, or None. Of two rows left active by racing activations
    before they were serialised, the later registered one (as every process reads it)."""
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))
                           .order_by(ModelVersion.id.desc()).limit(1)).first()


def follows_activation(settings: Settings) -> bool:
    """Whether ``settings`` leave the model to the activation: ``MAMMO_MODEL`` not set (a
    blank one is unset, see ``Settings``)."""
    return "model" not in settings.model_fields_set


def model_for(settings: Settings, session: Session) -> ModelSpec:
    """The model a process with ``settings`` must run: ``MAMMO_MODEL`` when it is set (in
    the environment, ``.env`` or by the caller, even to ``default``, which then names the
    shipped model), else the activated model, else the shipped default."""
    if follows_activation(settings):
        active = active_version(session)
        if active is not None:
            return _own_identity(
                session, _activated(active), named_by="the model activated in the database",
                fix=f" Until then,{ACTIVATE_ANOTHER}.")
    return _own_identity(session, resolve_ref(settings.model, lambda: nullcontext(session)),
                         named_by="MAMMO_MODEL")


def model_problem(settings: Settings, session: Session) -> str | None:
    """Why a worker started now with ``settings`` would refuse its model (and exit 5), as
    one line naming the path and the remedy, or None: the model ``model_for`` picks (the
    activation, else MAMMO_MODEL), its files checked as a worker checks them before it
    loads them (``verify_model``: hashing, no TensorFlow; what only Keras would refuse is
    not seen). For `mammo status --health`, which a monitoring check reads."""
    from shared.imaging.preprocess import PREPROCESSING_VERSION

    try:
        spec = model_for(settings, session)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        return _one_line(exc)  # its directory gone or holding another model: names the fix
    try:
        verify_model(spec, preprocessing_version=PREPROCESSING_VERSION)
    except (ModelNotFoundError, ModelIntegrityError) as exc:
        # Its own message says to re-copy the file; an activated one can also be replaced.
        activated = follows_activation(settings) and active_version(session) is not None
        return _one_line(exc) + (f" Until then,{ACTIVATE_ANOTHER}." if activated else "")
    return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def resolve_ref(ref: str, sessions: Callable[[], AbstractContextManager[Session]], *,
                named_by: str = "MAMMO_MODEL") -> ModelSpec:
    """The model ``ref`` names: a path or a shipped model (``resolve_model``), else, for
    NAME:VERSION (or NAME/VERSION) that names neither, the version registered in the
    database, as `mammo models list` shows it. A session is opened only then."""
    try:
        return resolve_model(ref, named_by=named_by)
    except ModelNotFoundError:
        named = name_version(ref)
        if named is None or locate(ref) is not None:
            raise  # not NAME:VERSION, or a directory was found and is not a model
        with sessions() as session:
            rows = list(session.scalars(select(ModelVersion).where(
                ModelVersion.name == named[0], ModelVersion.version == named[1])
                .order_by(ModelVersion.id)))
            if not rows:
                raise
            return _registered(ref, rows, named_by)


def _registered(ref: str, rows: list[ModelVersion], named_by: str) -> ModelSpec:
    """The model of the registered ``rows`` (one name and version): its stored path, checked
    to hold exactly that identity. The active row wins; two usable rows of different
    weights are refused as ambiguous rather than one picked."""
    usable: list[tuple[ModelVersion, ModelSpec]] = []
    problems: list[str] = []
    for row in sorted(rows, key=lambda r: not r.active):
        try:
            spec = _registered_spec(row)
        except (ModelNotFoundError, ModelIntegrityError) as exc:
            problems.append(str(exc))
            continue
        if row.active:
            return spec
        usable.append((row, spec))
    if len({spec.sha256 for _, spec in usable}) == 1:
        return usable[0][1]
    if usable:
        raise ModelNotFoundError(
            f"{named_by}={ref!r} names {len(usable)} registered models with different "
            f"weights: {', '.join(f'{r.path} (sha256 {r.sha256[:12]})' for r, _ in usable)}. "
            f"Give {named_by} the directory of the one you mean.")
    raise ModelNotFoundError(f"{named_by}={ref!r} is registered in the database, but no "
                             f"registered copy is usable: {' '.join(problems)}")


def _registered_spec(row: ModelVersion) -> ModelSpec:
    return _spec_of_row(row, "the registered", named_by="the registered path")


def _activated(active: ModelVersion) -> ModelSpec:
    """The activated model's spec, refused when its directory is gone or holds another."""
    fix = f"{ACTIVATE_ANOTHER} or restore it; no other model is used in its place."
    return _spec_of_row(active, "the activated model", fix=fix,
                        named_by="the model activated in the database")


def _spec_of_row(row: ModelVersion, what: str, *, named_by: str, fix: str = "") -> ModelSpec:
    """The model at a registered row's stored path, refused unless it is that very model."""
    named = f"{what} {row.name} {row.version} (sha256 {row.sha256[:12]})"
    if not Path(row.path).is_dir():
        copy = _shipped_copy(row)
        if copy is None:
            raise ModelNotFoundError(
                f"{named} is missing: {row.path} is not a directory on this machine, and no "
                f"model shipped here has that name, version and sha256.{fix}")
        log.info("%s is registered at %s, which this machine lacks; using the identical "
                 "shipped copy %s (sha256 of its weights checked)", named, row.path,
                 copy.directory)
        return copy
    spec = resolve_model(row.path, named_by=named_by)
    if (spec.name, spec.version, spec.sha256) != (row.name, row.version, row.sha256):
        raise ModelIntegrityError(
            f"{row.path} no longer holds {named}: it holds {spec.name} {spec.version} "
            f"(sha256 {spec.sha256[:12]}).{fix}")
    return spec


def _shipped_copy(row: ModelVersion) -> ModelSpec | None:
    """The model shipped on this machine that is ``row``'s very model, or None.

    The path stored at activation is the activating machine's; a worker installed elsewhere
    ships the same model at another path. Its metadata must name the row's name, version
    and sha256, and its model.keras must hash to that sha256 (metadata alone could sit
    beside other weights), so it is the same model, not a namesake."""
    for spec in shipped_models():
        if ((spec.name, spec.version, spec.sha256) == (row.name, row.version, row.sha256)
                and spec.model_path.is_file() and file_sha256(spec.model_path) == row.sha256):
            return spec
    return None
