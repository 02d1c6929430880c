"""Project error types. Each user-facing error renders as one line naming what was wrong."""

from __future__ import annotations


class RecsparkError(Exception):
    """Base class for errors caused by the user's input, config or environment (no traceback)."""

    exit_code = 2


class ConfigError(RecsparkError):
    """A configuration key is unknown, missing or of the wrong type."""


class SchemaError(RecsparkError):
    """A table or input lacks the columns or types a stage needs."""


class InputError(RecsparkError):
    """An input path is missing, empty or unreadable."""


class ReconciliationError(RecsparkError):
    """Counts of a run do not add up: records would have been lost or duplicated."""

    exit_code = 3


class ModelError(RecsparkError):
    """A model folder is missing, incomplete or unreadable."""


class DependencyError(RecsparkError):
    """A dependency (Delta jars, Horovod, ...) is missing and cannot be had."""


class LaunchError(RecsparkError):
    """A distributed launch failed; the message carries the command, exit code and log tail."""


class StageNotReadyError(RecsparkError):
    """A stage needs a table that an earlier stage has not written yet."""


class ConcurrentWriteError(RecsparkError):
    """Another writer committed to the same Delta table first; running the command again works."""

    exit_code = 4


class StorageError(RecsparkError):
    """The warehouse (or a model folder in it) is full, read-only or otherwise unwritable."""

    exit_code = 5
