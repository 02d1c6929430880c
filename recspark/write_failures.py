"""What a failed table write means: a lost commit race (tried again, then a one-line
ConcurrentWriteError), a missing metastore schema (ConfigError) or a storage failure (a full or
read-only disk, a quota: StorageError). Used by :mod:`recspark.tables` around every write, and
by the CLI for errors raised elsewhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from recspark.errors import ConcurrentWriteError, ConfigError, RecsparkError, StorageError
from recspark.log import get_logger

_R = TypeVar("_R")

# How often a MERGE that lost a commit race is tried again. Every MERGE here is idempotent
# (insert-if-absent or upsert of the same source), so trying again on the newer table version
# is safe; after that the run fails with ConcurrentWriteError.
MERGE_RETRIES = 3

# Delta's commit-conflict exceptions (Python class names and JVM error classes).
_CONFLICTS: tuple[tuple[str, str], ...] = (
    ("ConcurrentAppendException", "files were added by a concurrent update"),
    ("ConcurrentDeleteReadException", "files read were deleted by a concurrent update"),
    ("ConcurrentDeleteDeleteException", "files were deleted by a concurrent update"),
    ("ConcurrentTransactionException", "a concurrent transaction with the same id"),
    ("MetadataChangedException", "the table's metadata changed concurrently"),
    ("ProtocolChangedException", "the table was created or upgraded concurrently"),
    ("ConcurrentWriteException", "a concurrent transaction wrote to the table"),
    ("DeltaConcurrentModificationException", "a concurrent update"),
    ("DELTA_CONCURRENT_APPEND", "files were added by a concurrent update"),
    ("DELTA_CONCURRENT_DELETE_READ", "files read were deleted by a concurrent update"),
    ("DELTA_CONCURRENT_DELETE_DELETE", "files were deleted by a concurrent update"),
    ("DELTA_CONCURRENT_TRANSACTION", "a concurrent transaction with the same id"),
    ("DELTA_METADATA_CHANGED", "the table's metadata changed concurrently"),
    ("DELTA_PROTOCOL_CHANGED", "the table was created or upgraded concurrently"),
    ("DELTA_CONCURRENT_WRITE", "a concurrent transaction wrote to the table"),
)

# A write into a metastore schema that does not exist.
_SCHEMA_NOT_FOUND = "SCHEMA_NOT_FOUND"

# Storage failures seen in Java or Python error text, with a short explanation.
_STORAGE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No space left on device|ENOSPC", re.I), "no space left on device"),
    (re.compile(r"Disk quota exceeded|EDQUOT", re.I), "disk quota exceeded"),
    (re.compile(r"File too large|EFBIG", re.I), "file size limit reached"),
    (re.compile(r"Read-only file system|EROFS", re.I), "read-only file system"),
    (re.compile(r"Permission denied|AccessDeniedException|EACCES", re.I), "permission denied"),
    (re.compile(r"Mkdirs failed to create", re.I), "cannot create a folder"),
)


def conflict_kind(e: BaseException) -> str | None:
    """What Delta commit conflict ``e`` is (a short phrase), or None when it is none."""
    text = f"{type(e).__name__}: {e}"
    for marker, phrase in _CONFLICTS:
        if marker in text:
            return phrase
    return None


def storage_problem(text: str) -> str | None:
    """What storage failure an error text reports (a short phrase), or None."""
    for pattern, phrase in _STORAGE:
        if pattern.search(text):
            return phrase
    return None


def concurrent_error(path: str, kind: str) -> ConcurrentWriteError:
    """The one-line error for a lost commit race on table ``path``."""
    return ConcurrentWriteError(
        f"table {path}: another run wrote to it at the same time ({kind}); nothing of this "
        "run's write was committed: run the command again"
    )


@contextmanager
def write_errors(table: str, uc_schema: str | None = None) -> Iterator[None]:
    """Turn Delta commit conflicts and storage failures of a write to ``table`` into one-line
    errors; ``uc_schema``: the metastore schema of a table addressed by name (a missing one is
    named in the error)."""
    try:
        yield
    except RecsparkError:
        raise
    except Exception as e:
        kind = conflict_kind(e)
        if kind is not None:
            raise concurrent_error(str(table), kind) from e
        if uc_schema is not None and _SCHEMA_NOT_FOUND in str(e):
            raise ConfigError(
                f"key 'warehouse': table {table}: the schema {uc_schema} does not exist; create "
                "it (CREATE SCHEMA, or deploy the bundle, which declares it)"
            ) from e
        problem = storage_problem(str(e))
        if problem is not None:
            raise StorageError(
                f"table {table}: write failed: {problem}; the table keeps its last committed "
                "version"
            ) from e
        raise


def retrying(
    table: str, uc_schema: str | None, attempt: Callable[[], _R], retries: int = MERGE_RETRIES
) -> _R:
    """Run an idempotent write, again (up to ``retries`` times) when it loses a commit race."""
    for i in range(retries + 1):
        try:
            with write_errors(table, uc_schema):
                return attempt()
        except ConcurrentWriteError as e:
            if i == retries:
                raise
            get_logger("tables").warning(
                "table %s: another writer committed first (%s); trying again (%d/%d)",
                table,
                conflict_kind(e.__cause__ or e),
                i + 2,
                retries + 1,
            )
            time.sleep(0.5 * (i + 1))
    raise AssertionError("unreachable")  # pragma: no cover
