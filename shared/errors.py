"""The one exception tree of the project.

Two families matter to the pipeline:

* ``TransientError``: the world is briefly unavailable (database, broker). Tasks retry these
  with backoff; the CLI reports them as "unreachable".
* ``InputError``: this particular file can never be processed. It is recorded on the image
  row as ``failed`` with its ``code`` and message, and is never retried.

Everything else a person can fix (no model, bad configuration, missing path) is a
``UserFacingError`` with a message that says what to do. Messages never contain patient data.
"""

from __future__ import annotations

from shared.enums import ErrorCode


def first_line(exc: object) -> str:
    """The first non-blank line of an exception's message ("" if it has none): what a log
    line or a one-line error quotes of it."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


class MammoError(Exception):
    """Root of every error this project raises on purpose."""


class UserFacingError(MammoError):
    """A problem the operator can fix; the CLI prints the message as one line."""


class ConfigurationError(UserFacingError):
    """A setting is missing or invalid."""


class ModelNotFoundError(UserFacingError):
    """No usable model at the configured location."""


class ModelIntegrityError(UserFacingError):
    """The model file does not match its recorded sha256 or metadata."""


class ModelComparisonError(UserFacingError):
    """Two models cannot be compared as a run and its same-seed re-run."""


class ReportWriteError(ConfigurationError):
    """A report file cannot be written where it was asked for (not a folder, read-only,
    full disk). The results it would show stay in the database."""


class PathNotFoundError(UserFacingError):
    """A path given on the command line does not exist."""


class ManifestError(UserFacingError):
    """A metadata manifest (CSV) is missing, malformed, or holds an invalid value."""


class DatasetError(UserFacingError):
    """Labelled training or evaluation data is missing, malformed or unusable."""


class ReportTargetNotFoundError(UserFacingError):
    """The batch or exam a report or listing asks for is not in the database."""


class MigrationError(UserFacingError):
    """A schema migration failed; the database was rolled back to the revision it had."""


class DatabaseUnusableError(UserFacingError):
    """The database was reached, and this release cannot use it: a file that is not SQLite
    or is corrupted, another application's database, or a schema from a newer release.
    Not transient: no retry fixes it, a person must point the pipeline at its database."""


class TransientError(MammoError):
    """A dependency is unavailable right now; retrying later may succeed."""


class DatabaseUnavailableError(TransientError, UserFacingError):
    """The database cannot be reached."""


class BrokerUnavailableError(TransientError, UserFacingError):
    """The message broker cannot be reached."""


class InputError(MammoError):
    """This file can never be processed; record it as failed with ``code``.

    ``message`` is a sentence a radiographer or admin understands. It may name DICOM tags
    and the values found, but never patient identifiers.
    """

    code: ErrorCode = ErrorCode.UNREADABLE

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.value


class UnreadableImageError(InputError):
    code = ErrorCode.UNREADABLE


class UnsupportedFormatError(InputError):
    code = ErrorCode.NOT_DICOM_OR_IMAGE


class UnsupportedCompressionError(InputError):
    code = ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX


class TruncatedImageError(InputError):
    code = ErrorCode.TRUNCATED


class ImageTooLargeError(InputError):
    code = ErrorCode.TOO_LARGE


class NotAMammogramError(InputError):
    code = ErrorCode.NOT_MAMMOGRAPHY


class ForProcessingImageError(InputError):
    code = ErrorCode.FOR_PROCESSING


class MissingFileError(InputError):
    code = ErrorCode.MISSING_FILE


class BadFileNameError(InputError):
    """The file's name cannot be stored (not valid UTF-8), so the file cannot be tracked."""

    code = ErrorCode.BAD_FILE_NAME


class EmptyImageError(NotAMammogramError):
    code = ErrorCode.EMPTY_IMAGE


class UnexpectedChannelsError(NotAMammogramError):
    code = ErrorCode.UNEXPECTED_CHANNELS


class MissingPixelDataError(UnreadableImageError):
    code = ErrorCode.MISSING_PIXEL_DATA


class PseudonymKeyMissingError(InputError):
    """A DICOM carries a PatientID, and no key is configured to pseudonymise it."""

    code = ErrorCode.NO_PSEUDONYM_KEY


class NotificationError(MammoError):
    """A notification was not delivered this time (server down, timeout, 5xx): retried.

    Never raised past the notification code: a notification failure never fails a batch.
    Messages name the channel and the server's answer, never a secret or patient data.
    """


class NotificationRejectedError(NotificationError):
    """The server refused the notification for good (bad login, 4xx): not retried."""
