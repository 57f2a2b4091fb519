"""Named exit codes: scripts and schedulers branch on these, so they never change meaning."""

from __future__ import annotations

from enum import IntEnum

from shared import errors


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1              # unexpected: a bug; the traceback is printed
    USAGE = 2                # click's own code for bad arguments
    IMAGES_FAILED = 3        # the job ran, but some images ended as failed
    CONFIG = 4               # invalid configuration
    NO_MODEL = 5             # no usable model
    PATH_NOT_FOUND = 6
    DATABASE_UNAVAILABLE = 7  # unreachable, refusing writes, or unusable (corrupted, not ours)
    BROKER_UNAVAILABLE = 8
    MIGRATION_FAILED = 9     # the schema migration failed and was rolled back
    INTERRUPTED = 130


def exit_code_for(exc: errors.UserFacingError) -> ExitCode:
    mapping: tuple[tuple[type[errors.UserFacingError], ExitCode], ...] = (
        (errors.DatabaseUnavailableError, ExitCode.DATABASE_UNAVAILABLE),
        (errors.DatabaseUnusableError, ExitCode.DATABASE_UNAVAILABLE),
        (errors.MigrationError, ExitCode.MIGRATION_FAILED),
        (errors.BrokerUnavailableError, ExitCode.BROKER_UNAVAILABLE),
        (errors.ModelNotFoundError, ExitCode.NO_MODEL),
        (errors.ModelIntegrityError, ExitCode.NO_MODEL),
        (errors.PathNotFoundError, ExitCode.PATH_NOT_FOUND),
        (errors.ConfigurationError, ExitCode.CONFIG),
        (errors.DatasetError, ExitCode.USAGE),
        (errors.ManifestError, ExitCode.USAGE),  # bad input named on the command line
        (errors.ModelComparisonError, ExitCode.USAGE),
        (errors.ReportTargetNotFoundError, ExitCode.USAGE),
    )
    for kind, code in mapping:
        if isinstance(exc, kind):
            return code
    return ExitCode.FAILURE
