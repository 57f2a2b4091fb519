"""The single settings object, built from ``MAMMO_*`` variables and an optional ``.env``.

Nothing else in the project reads the environment: the CLI builds one ``Settings`` and passes
it to the factories (database engine, Celery app, classifier).
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.util import asbool

from shared.errors import ConfigurationError
from shared.urls import redact_endpoint, redact_url

log = logging.getLogger(__name__)

# A host named, or kombu warns "No hostname was supplied" on every embedded run.
EMBEDDED_BROKER_URL = "memory://localhost/"
DEFAULT_DATABASE_URL = "sqlite:///mammo.db"
# models/<name>/<version>/ shipped inside the distribution; see models/registry.py.
DEFAULT_MODEL = "default"
# The names logging accepts; also the choices of `mammo --log-level`.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_URL_WITH_SCHEME = re.compile(r"^[A-Za-z][\w+.\-]*://")
ENV_PREFIX = "MAMMO_"
# MAMMO_* names that are not settings yet must not stop a command: the test suite's own
# plumbing reads this one (tests/helpers/reliability.py), and CI exports it for a whole run.
NOT_SETTINGS = frozenset({"MAMMO_RELIABILITY_RECORD"})
# How close a name's head must be to MAMMO_ (difflib ratio) to be taken for it misspelt:
# MAMO_, MAMMMO_, MAMMO-, MAMMA_ are; GAMMA_, MAMA_ and no head at all (DATABASE_URL) are not.
_PREFIX_LIKENESS = 0.8
# An HMAC key shorter than this is guessable by brute force: every pseudonym is then reversible.
PATIENT_ID_KEY_MIN_BYTES = 16
KEY_HINT = ("set MAMMO_PATIENT_ID_KEY (in the environment or .env) to a long random secret, "
            "e.g. the output of: python -c \"import secrets; print(secrets.token_hex(32))\"")
# SQLAlchemy reads postgresql:// as psycopg2, and postgres:// (Heroku's, many tools') not at
# all; psycopg (3) is the PostgreSQL driver this project installs, so both mean it.
_POSTGRES_SCHEME = re.compile(r"^(?:postgres|postgresql)(?=://)", re.IGNORECASE)
POSTGRES_DRIVER = "postgresql+psycopg"
# Settings whose value is a URL that may carry a password (userinfo or ?password=).
_URL_FIELDS = frozenset({"database_url", "broker_url"})


def sqlite_in_memory(database_url: str) -> bool:
    """Whether a SQLite URL opens a database private to each connection: ``sqlite://``,
    ``sqlite:///`` and ``:memory:``, or a URI (``?uri=true``) naming ``file::memory:``, an
    empty path (SQLite's private temporary database), ``mode=memory`` or ``vfs=memdb``."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    if not asbool(url.query.get("uri", False)) or not database.startswith("file:"):
        return False  # without uri=true, the whole name is a file's (the query is dropped)
    return (database in ("file:", "file::memory:") or url.query.get("mode") == "memory"
            or url.query.get("vfs") == "memdb")


def short_patient_id_key(key: bytes) -> str | None:
    """Why ``key`` cannot be the pseudonymisation key, or None when it can."""
    if len(key) >= PATIENT_ID_KEY_MIN_BYTES:
        return None
    return (f"MAMMO_PATIENT_ID_KEY is too short to protect patient IDs (at least "
            f"{PATIENT_ID_KEY_MIN_BYTES} characters); {KEY_HINT}.")


class Settings(BaseSettings):
    """Configuration for every process. Frozen: derive variants with ``model_copy(update=...)``."""

    model_config = SettingsConfigDict(
        # utf-8-sig: Windows Notepad starts a UTF-8 file with a byte-order mark, which read
        # as plain UTF-8 glues itself to the first name and silently drops that setting.
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8-sig", extra="ignore",
        frozen=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL. Default: a SQLite file in the working directory.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL (redis://...). Unset: the embedded local queue.",
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="Model directory (holding model.keras and metadata.json), or the name of "
        "a model shipped under models/.",
    )
    chunk_size: int = Field(16, ge=1, le=256, description="Images per task and forward pass.")
    task_time_limit_s: int = Field(
        900, ge=30, description="Hard time limit of one chunk task, in seconds.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Claims of one image before it is failed as a poison input.",
    )
    max_image_pixels: int = Field(
        80_000_000, ge=1, description="Images larger than this are rejected as too large.",
    )
    report_dir: Path = Field(Path("reports"), description="Where batch reports are written.")
    sqlite_wal: bool = Field(
        True, description="Use WAL journaling for SQLite. Turn off on network filesystems.",
    )
    tf_intra_op_threads: int = Field(
        0, ge=0, description="TensorFlow intra-op threads per worker process (0: TF decides).",
    )
    tf_inter_op_threads: int = Field(
        0, ge=0, description="TensorFlow inter-op threads per worker process (0: TF decides).",
    )
    micro_batch: int = Field(
        4, ge=0, le=256,
        description="Images per sequential step inside one forward pass: bounds a worker "
        "process's activation memory at no cost in speed on a CPU (0: the whole chunk at "
        "once, for a GPU worker).",
    )
    decode_processes: int = Field(
        2, ge=0, le=64,
        description="Processes per worker process that decode and preprocess a chunk's "
        "images side by side (0: decode in the worker process itself, one at a time).",
    )
    worker_max_memory_mb: int = Field(
        0, ge=0, description="Recycle a worker child above this RSS (0: never).",
    )
    worker_start_timeout_s: int = Field(
        600, ge=10, le=86_400,
        description="Seconds a worker's pool child may take to start (load TensorFlow and "
        "the model) before Celery kills it as hung. A replacement child (after an OOM kill, "
        "a poison image, MAMMO_WORKER_MAX_MEMORY_MB) that needs longer is killed, and so is "
        "its replacement, for ever: the worker stops working while it still answers pings. "
        "Keep it well above the load time each child logs (a loaded host, a slow GPU start).",
    )
    claim_heartbeat_s: int = Field(
        30, ge=1, le=600, description="A worker renews the claims of the chunk it is working "
        "on this often; claims not renewed for 4 heartbeats belong to a dead worker, and "
        "the sweeper re-sends their images.",
    )
    sweep_interval_s: int = Field(
        120, ge=0, description="Seconds between sweeps for lost work in each worker (0: off).",
    )
    requeue_after_s: int = Field(
        600, ge=1, description="A queued image older than this, with the broker queue empty, "
        "is presumed to have lost its message and is re-queued by the sweeper.",
    )
    urgent_requeue_after_s: int = Field(
        120, ge=1, description="MAMMO_REQUEUE_AFTER_S for an urgent image (never longer than "
        "it): a queued urgent image whose message was sent this long ago, with no urgent "
        "message waiting in the broker, is presumed to have lost its message and is re-queued "
        "by the sweeper, whatever routine work waits. Workers take an urgent message before "
        "any routine one, within one chunk per worker process.",
    )
    broker_socket_timeout_s: float = Field(
        30.0, ge=5, le=3600,
        description="Seconds any one broker command may wait for Redis's reply before the "
        "connection is dropped as dead and retried. Without it a broker that stops answering "
        "without closing the connection (a paused or failed-over Redis, a NAT or firewall "
        "dropping an idle flow) holds a submit, a watcher's send or a worker's sweep for "
        "ever. Keep it above a second (a worker's BRPOP waits one).",
    )
    log_level: str = Field("INFO", description="Logging level for all processes.")
    site_timezone: str = Field(
        "UTC",
        description="The site's IANA time zone (e.g. Australia/Sydney): where its days begin "
        "and end. A drop folder's day batch runs from midnight to midnight there, and "
        "--since/--until values without an offset are read on its clock. Times are still "
        "stored and shown in UTC. Set the same value for watchers and workers.",
    )
    patient_id_key: SecretStr | None = Field(
        None, description="HMAC key for pseudonymising PatientID. No default, by design.",
    )
    watch_quiet_period_s: float = Field(
        5.0, ge=0.0, le=3600.0,
        description="Drop folder: seconds a file's size and mtime must stay unchanged before "
        "it is read, when no close-write or rename event says it is complete.",
    )
    watch_incomplete_grace_s: float = Field(
        120.0, ge=0.0,
        description="Drop folder: a stable file that still does not parse completely (e.g. "
        "a DICOM shorter than its header says) is queued after this many seconds anyway, "
        "and ends failed with its reason.",
    )
    watch_poll_interval_s: float = Field(
        1.0, gt=0.0, le=300.0,
        description="Drop folder: PollingObserver interval (--poll) and the pause between "
        "checks of the database for finished files.",
    )
    watch_reconcile_interval_s: float = Field(
        60.0, gt=0.0,
        description="Drop folder: seconds between full rescans that catch files whose events "
        "were lost (inotify queue overflow).",
    )
    watch_ignore: str = Field(
        "*.part,*.filepart,*.tmp,*.partial,*.crdownload,*.swp,*~,~*",
        description="Drop folder: comma-separated glob patterns of temporary names, ignored "
        "until renamed (WinSCP's .filepart, browsers' .part and .crdownload, backup copies' "
        "name~). Dotfiles and our .reason.txt sidecars are always ignored.",
    )
    watch_after: Literal["leave", "move", "delete"] = Field(
        "leave",
        description="Drop folder: what to do with a file once processed: leave it (the state "
        "is in the database), move it to processed/ or failed/ (with a .reason.txt), or "
        "delete it.",
    )
    watch_remove_emptied: bool = Field(
        False,
        description="Drop folder, with move or delete: remove a sub-folder the watcher "
        "emptied once it stayed empty for the quiet period (a sender that makes a folder "
        "per exam or series). Off by default: a sender writing into a fixed folder it does "
        "not create would find it gone.",
    )
    exam_timeout_s: float = Field(
        1800.0, gt=0.0,
        description="An exam without all 4 standard views gets an exam result flagged "
        "incomplete once no image of it has arrived for this many seconds.",
    )

    smtp_host: str | None = Field(
        None, description="Notifications: SMTP server for e-mail. Unset: no e-mail is sent.",
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 SSL).")
    smtp_security: Literal["starttls", "ssl", "none"] = Field(
        "starttls",
        description="SMTP transport security: starttls, ssl (implicit TLS) or none (a local "
        "relay only; no login is sent over it). The certificate is always verified.",
    )
    smtp_user: str | None = Field(None, description="SMTP login name (unset: no login).")
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password. No default, by design.",
    )
    smtp_from: str | None = Field(None, description="Sender address of notification e-mails.")
    smtp_to: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Recipients of notification e-mails, comma-separated.",
    )
    smtp_ca_file: Path | None = Field(
        None, description="PEM file of CA certificates that sign the SMTP server's certificate "
        "(default: the system's trust store).",
    )
    alert_suspicion: int = Field(
        8, ge=1, le=10,
        description="Notifications: an exam scored at or above this suspicion (1-10) sends an "
        "immediate alert.",
    )
    webhook_url: str | None = Field(
        None, description="Notifications: http(s) URL that receives signed JSON POSTs. Unset: "
        "no webhook.",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs webhook bodies. No default, by design.",
    )
    notify_timeout_s: float = Field(
        5.0, gt=0.0, le=60.0, description="Notifications: network timeout of one attempt.",
    )
    notify_retries: int = Field(
        3, ge=0, le=10, description="Notifications: retries after a failed first attempt.",
    )
    notify_backoff_s: float = Field(
        1.0, ge=0.0, le=60.0,
        description="Notifications: delay before the first retry; it doubles per retry, with "
        "jitter, up to MAMMO_NOTIFY_BACKOFF_MAX_S.",
    )
    notify_backoff_max_s: float = Field(
        8.0, ge=0.0, le=300.0, description="Notifications: the longest delay between retries.",
    )
    notify_resend_after_s: int = Field(
        600, ge=0,
        description="Notifications: the sweeper tries a failed delivery again once it has "
        "failed this long ago (0: never).",
    )
    notify_give_up_after_s: int = Field(
        86_400, ge=60,
        description="Notifications: events older than this are no longer sent or retried "
        "by the sweeper (an alert a day late is for the worklist, not the inbox).",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() of the settings end up in logs and tracebacks: the URLs' passwords
        # are masked there as everywhere else (the secrets are SecretStr already).
        # The webhook's path is often its token, so only its host is shown.
        for name, value in super().__repr_args__():
            shown = value
            if isinstance(value, str) and name in _URL_FIELDS:
                shown = redact_url(value)
            elif isinstance(value, str) and name == "webhook_url":
                shown = redact_endpoint(value)
            yield name, shown

    @field_validator("broker_url")
    @classmethod
    def _broker_url_or_embedded(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None  # blank: the embedded queue
        # kombu reads a bare word as an AMQP host name, so a typo surfaced as "broker
        # unreachable" (exit 8), as if a server were down. Not echoed: without a scheme,
        # redact_url cannot tell a password from a host.
        if not _URL_WITH_SCHEME.match(value):
            raise ValueError("MAMMO_BROKER_URL is not a URL (no scheme://); expected e.g. "
                             "redis://host:6379/0, or unset it for the embedded queue")
        # kombu's KeyError for an http:// URL surfaced as advice about passwords.
        from kombu.transport import TRANSPORT_ALIASES  # celery's, and slow: only when set

        scheme = value.split("://", 1)[0]
        if scheme.lower() not in {alias.lower() for alias in TRANSPORT_ALIASES}:
            raise ValueError(f"MAMMO_BROKER_URL starts with {scheme}://, which is not a message "
                             "broker's scheme: use redis://host:6379/0 (rediss:// for TLS), or "
                             "unset it for the embedded queue")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # logging.basicConfig would raise on an unknown name, as a traceback, after parsing.
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"MAMMO_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("site_timezone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        # Checked at load, not at the watcher's first file or a report's first --since.
        # Blank (docker-compose's `${VAR:-}`) is unset: UTC.
        name = value.strip() or "UTC"
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"MAMMO_SITE_TIMEZONE: {name!r} is not a time zone this system knows: use an "
                "IANA name such as Europe/London, Australia/Sydney or UTC (if even those "
                "fail, install the system's tzdata package)") from None
        return name

    @field_validator("database_url")
    @classmethod
    def _parsable_database_url(cls, value: str) -> str:
        # Parsed here, not at first use, so a typo is one line naming the setting.
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(
                f"MAMMO_DATABASE_URL {redact_url(value)!r} is not a database URL; expected "
                f"e.g. sqlite:///mammo.db or {POSTGRES_DRIVER}://user@host/db") from None
        if sqlite_in_memory(value):
            # Every connection opens its own empty one: the health check passed, the workers'
            # threads found no tables, and the run said its images stayed queued in it.
            raise ValueError(
                f"MAMMO_DATABASE_URL {redact_url(value)!r} is an in-memory SQLite database, "
                "which the run's processes and threads cannot share (each would open its own, "
                "empty); give a file path (sqlite:///path/to/mammo.db) or leave "
                "MAMMO_DATABASE_URL unset for ./mammo.db")
        # Rewritten as text, not through make_url: the rest (password, query) stays as given.
        return _POSTGRES_SCHEME.sub(POSTGRES_DRIVER, value, count=1)

    @field_validator("patient_id_key")
    @classmethod
    def _long_enough_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not at the first DICOM with a PatientID: a watcher passed its health
        # check and stopped on the first patient's file, after the model had loaded.
        key = value.get_secret_value().encode("utf-8") if value is not None else b""
        if key and (problem := short_patient_id_key(key)):
            raise ValueError(problem)
        return value

    @field_validator("smtp_host", "smtp_user", "smtp_password", "smtp_from", "smtp_ca_file",
                     "webhook_url", "webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # docker-compose passes `${VAR:-}` as an empty string: that means "not configured".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="before")
    @classmethod
    def _blank_model_is_unset(cls, data: object) -> object:
        # `export MAMMO_MODEL=` (a service file, `${VAR:-}`) means "not chosen": the key is
        # dropped, not defaulted, so the model stays out of model_fields_set and the
        # activation still applies (models.activation.model_for).
        if isinstance(data, dict) and isinstance(data.get("model"), str) \
                and not data["model"].strip():
            return {k: v for k, v in data.items() if k != "model"}
        return data

    @field_validator("smtp_to", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _notifications_complete(self) -> Settings:
        # Refuse half a configuration at start-up rather than drop notifications at night.
        if self.smtp_host and not (self.smtp_from and self.smtp_to):
            raise ValueError("MAMMO_SMTP_HOST is set: also set MAMMO_SMTP_FROM and MAMMO_SMTP_TO")
        if self.smtp_user and self.smtp_password is None:
            raise ValueError("MAMMO_SMTP_USER is set: also set MAMMO_SMTP_PASSWORD")
        if self.smtp_user and self.smtp_security == "none":
            raise ValueError("MAMMO_SMTP_SECURITY=none would send the SMTP password in clear "
                             "text: use starttls or ssl")
        if self.smtp_ca_file is not None and not self.smtp_ca_file.is_file():
            raise ValueError(f"MAMMO_SMTP_CA_FILE={self.smtp_ca_file} is not a file: give the "
                             "PEM file of the CA that signs the SMTP server's certificate")
        if self.webhook_url and not self.webhook_url.lower().startswith(("https://", "http://")):
            raise ValueError("MAMMO_WEBHOOK_URL must be an http:// or https:// URL")
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError("MAMMO_WEBHOOK_URL is set: also set MAMMO_WEBHOOK_SECRET (webhook "
                             "bodies are always signed)")
        return self

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER_URL

    @property
    def is_embedded(self) -> bool:
        return self.broker_url is None

    @property
    def visibility_timeout_s(self) -> int:
        # The Redis visibility clock starts at reservation, not at task start: with prefetch 1
        # a message waits at most one task before it runs, so 3x the limit covers wait + run.
        return 3 * self.task_time_limit_s

    @property
    def claim_lease_s(self) -> int:
        # A live worker renews its claims every heartbeat (worker.pipeline), so a claim
        # older than a few heartbeats is a dead worker's: its images are re-sent within
        # minutes, not after the chunk's whole time limit. Shorter than the visibility
        # timeout, so a redelivered message can reclaim the rows.
        return 4 * self.claim_heartbeat_s

    @property
    def site_zone(self) -> ZoneInfo:
        """MAMMO_SITE_TIMEZONE as a zone (cached by zoneinfo: cheap to ask again)."""
        return ZoneInfo(self.site_timezone)

    @property
    def watch_ignore_patterns(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.watch_ignore.split(",") if p.strip())

    def embedded(self) -> Settings:
        """The same settings with the embedded local queue, whatever the environment says."""
        return self.model_copy(update={"broker_url": None})


@cache
def setting_names() -> frozenset[str]:
    """Every ``MAMMO_*`` name a setting is read from."""
    return frozenset(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)


def _env_files(choice: object) -> list[Path]:
    """The ``.env`` files pydantic-settings reads for this ``_env_file`` (None: none)."""
    if choice is None:
        return []
    chosen = choice if isinstance(choice, list | tuple) else [choice]
    return [Path(str(name)).expanduser() for name in chosen]


def _env_file_names(path: Path) -> list[str]:
    """The names a ``.env`` file sets (none when there is no such file).

    Stricter than pydantic-settings: python-dotenv only warns about a line it cannot parse,
    and skips a ``.env`` that is a directory, so the command ran on defaults (a fresh
    ./mammo.db) when the file meant another database.
    """
    if not os.path.lexists(path):
        return []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigurationError(f"Settings file {path} is not UTF-8 text: save it as "
                                 "UTF-8, or remove it") from None
    except OSError as exc:
        raise ConfigurationError(f"Settings file {path} cannot be read "
                                 f"({exc.strerror or type(exc).__name__}): make it a readable "
                                 "file, or remove it") from None
    bindings = list(parse_stream(io.StringIO(text)))
    if bad := [str(b.original.line) for b in bindings if b.error]:
        # Not quoted: the line may hold a password.
        raise ConfigurationError(
            f"Settings file {path}, line {', '.join(bad)}: not a NAME=value line (an "
            "unterminated quote?): fix it, or remove it")
    return [b.key for b in bindings if b.key]


def _unknown_setting(name: str, where: str) -> str | None:
    """Why ``name`` (from ``where``) is a mistake, or None when it is a setting or no
    ``MAMMO_*`` name at all, nor one with a misspelt prefix."""
    upper = name.upper()  # pydantic-settings matches names case-insensitively
    if upper in setting_names() | NOT_SETTINGS:
        return None
    if not upper.startswith(ENV_PREFIX):
        meant = _misspelt_prefix(upper)
        return f"{name}{where} is not a setting (did you mean {meant}?)" if meant else None
    # Compared without the shared prefix, which would make every name look close.
    stems = {known.removeprefix(ENV_PREFIX): known for known in setting_names()}
    close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), stems, n=1)
    hint = f" (did you mean {stems[close[0]]}?)" if close else ""
    return f"{name}{where} is not a setting{hint}"


def _misspelt_prefix(upper: str) -> str | None:
    """The setting that ``upper`` names with a misspelt prefix (MAMO_DATABASE_URL,
    MAMMO-DATABASE_URL, MAMMODATABASE_URL), or None.

    Only the prefix may differ, and only a little: other programs' names (DATABASE_URL,
    GAMMA_LOG_LEVEL) share setting names' endings.
    """
    for known in sorted(setting_names(), key=len, reverse=True):  # the shortest head
        head = upper.removesuffix(known.removeprefix(ENV_PREFIX))
        if head not in (upper, ENV_PREFIX) and difflib.SequenceMatcher(
                None, head, ENV_PREFIX).ratio() >= _PREFIX_LIKENESS:
            return known
    return None


def _refuse_unknown_names(env_files: dict[Path, list[str]]) -> None:
    """Refuse MAMMO_* names that are not settings, in the environment or a ``.env`` file
    (``env_files``: each file's names), and names in a ``.env`` whose MAMMO_ prefix is
    misspelt. Any of them is otherwise ignored, and its setting silently left at its default
    (a worker on a fresh ./mammo.db instead of the real database).

    A misspelt prefix in the environment is only a warning: the environment is shared with
    every other program, whose names may happen to look like ours.
    """
    problems: list[str] = []
    for name in os.environ:
        if (problem := _unknown_setting(name, "")) is None:
            continue
        if name.upper().startswith(ENV_PREFIX):
            problems.append(problem)
        else:
            log.warning("%s: it is ignored; rename it if it is meant for mammo", problem)
    for path, names in env_files.items():
        problems += [p for p in (_unknown_setting(name, f" in {path}") for name in names) if p]
    if problems:
        raise ConfigurationError(
            f"Invalid MAMMO_* configuration: {'; '.join(problems)}. Fix or remove each: the "
            "settings are listed in the README's Configuration section")


def _value_source(variable: str, env_files: dict[Path, list[str]]) -> str:
    """Where pydantic-settings took ``variable`` from, as words to follow its name: the
    environment wins over ``.env`` files, and a later file over an earlier one."""
    if variable in {name.upper() for name in os.environ}:
        return " in the environment"
    for path, names in reversed(env_files.items()):
        if variable in {name.upper() for name in names}:
            return f" in {path}"
    return ""  # a command-line option's value


def _validation_problem(error: ErrorDetails, env_files: dict[Path, list[str]]) -> str:
    """One pydantic error as the variable a person set and where, not the field's name."""
    message = error["msg"].removeprefix("Value error, ")
    field = error["loc"][0] if error["loc"] else None
    if not isinstance(field, str) or field not in Settings.model_fields:
        return message  # a check across settings: its message names them
    variable = f"{ENV_PREFIX}{field.upper()}"
    where = _value_source(variable, env_files)
    if message.startswith(variable):  # our validators' messages name it already
        return f"{variable}{where}{message.removeprefix(variable)}"
    return f"{variable}{where}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``.env``), turning errors into one line."""
    chosen = overrides.get("_env_file", Settings.model_config.get("env_file"))
    env_files = {path: _env_file_names(path) for path in _env_files(chosen)}
    _refuse_unknown_names(env_files)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Without the input values: pydantic echoes them, and they may hold a secret.
        problems = "; ".join(
            _validation_problem(err, env_files)
            for err in exc.errors(include_url=False, include_input=False))
        raise ConfigurationError(f"Invalid MAMMO_* configuration: {problems}") from None
    except ValueError as exc:
        raise ConfigurationError(f"Invalid MAMMO_* configuration: {exc}") from exc
