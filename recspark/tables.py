"""The warehouse's table paths and the Delta read / overwrite / merge helpers.

Only stage ``run`` functions call these: transforms never do I/O.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from recspark.errors import (
    ConcurrentWriteError,
    ConfigError,
    RecsparkError,
    StageNotReadyError,
    StorageError,
)

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

# Storage failures seen in Java or Python error text, with a short explanation.
_STORAGE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No space left on device|ENOSPC", re.I), "no space left on device"),
    (re.compile(r"Disk quota exceeded|EDQUOT", re.I), "disk quota exceeded"),
    (re.compile(r"File too large|EFBIG", re.I), "file size limit reached"),
    (re.compile(r"Read-only file system|EROFS", re.I), "read-only file system"),
    (re.compile(r"Permission denied|AccessDeniedException|EACCES", re.I), "permission denied"),
    (re.compile(r"Mkdirs failed to create", re.I), "cannot create a folder"),
)

SILVER_EVENTS = "silver/events"
SILVER_QUARANTINE = "silver/quarantine"
SILVER_ITEMS = "silver/items"
SILVER_INTERACTIONS = "silver/interactions"
SILVER_INGEST_RUNS = "silver/ingest_runs"
SILVER_EVENT_HOURS = "silver/event_hours"
GOLD_ITEM_EMBEDDINGS = "gold/item_embeddings"
GOLD_USER_EMBEDDINGS = "gold/user_embeddings"
GOLD_RECOMMENDATIONS = "gold/recommendations"
GOLD_METRICS = "gold/metrics"
GOLD_ITEM_VECTORS = "gold/item_vectors"
GOLD_USER_VECTORS = "gold/user_vectors"

# Which stage writes each table, for "run that stage first" messages.
WRITTEN_BY = {
    SILVER_EVENTS: "ingest",
    SILVER_QUARANTINE: "ingest",
    SILVER_ITEMS: "ingest",
    SILVER_INTERACTIONS: "ingest",
    SILVER_INGEST_RUNS: "ingest",
    SILVER_EVENT_HOURS: "ingest",
    GOLD_ITEM_EMBEDDINGS: "embed",
    GOLD_USER_EMBEDDINGS: "embed",
    GOLD_RECOMMENDATIONS: "recommend",
    GOLD_METRICS: "evaluate",
    GOLD_ITEM_VECTORS: "train",
    GOLD_USER_VECTORS: "train",
}


def table_path(warehouse: str, name: str) -> str:
    """``warehouse/name``; ``name`` must stay under the warehouse (no absolute path, no ``..``)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ":" in name or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"table name {name!r} must be a relative path under the warehouse")
    return warehouse.rstrip("/") + "/" + "/".join(parts)


def exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table with at least one commit is at ``path``.

    ``isDeltaTable`` answers from the session's cached log of the path without refreshing it:
    once it has seen an empty ``_delta_log`` (what a first write killed or failed before its
    commit leaves), it says False even after another process has created the table. Loading
    the table refreshes that log, so a False is checked that way.
    """
    if DeltaTable.isDeltaTable(spark, path):
        return True
    try:
        spark.read.format("delta").load(path)  # analysing the load refreshes the cached log
    except AnalysisException:
        return False
    return True


def read(spark: SparkSession, warehouse: str, name: str) -> DataFrame:
    """Read a Delta table, or say which stage must run first."""
    path = table_path(warehouse, name)
    if not exists(spark, path):
        stage = WRITTEN_BY.get(name, "an earlier stage")
        raise StageNotReadyError(f"table {path} does not exist yet: run `recspark {stage}` first")
    return spark.read.format("delta").load(path)


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
def _write_errors(path: str) -> Iterator[None]:
    """Turn Delta commit conflicts and storage failures of a write into one-line errors."""
    try:
        yield
    except RecsparkError:
        raise
    except Exception as e:
        kind = conflict_kind(e)
        if kind is not None:
            raise concurrent_error(path, kind) from e
        problem = storage_problem(str(e))
        if problem is not None:
            raise StorageError(
                f"table {path}: write failed: {problem}; the table keeps its last committed version"
            ) from e
        raise


def _retrying(path: str, attempt: Callable[[], _R], retries: int = MERGE_RETRIES) -> _R:
    """Run an idempotent write, again (up to ``retries`` times) when it loses a commit race."""
    for i in range(retries + 1):
        try:
            with _write_errors(path):
                return attempt()
        except ConcurrentWriteError as e:
            if i == retries:
                raise
            print(
                f"[recspark] table {path}: another writer committed first "
                f"({conflict_kind(e.__cause__ or e)}); trying again ({i + 2}/{retries + 1})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(0.5 * (i + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def overwrite(
    df: DataFrame,
    warehouse: str,
    name: str,
    partition_by: Sequence[str] = (),
    replace_where: str | None = None,
) -> None:
    """Replace a table's contents atomically (one Delta commit; readers see old or new)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where).option("overwriteSchema", "false")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    path = table_path(warehouse, name)
    with _write_errors(path):
        writer.save(path)


def append(df: DataFrame, warehouse: str, name: str) -> None:
    """Append rows in one commit (blind appends never conflict with each other)."""
    path = table_path(warehouse, name)
    with _write_errors(path):
        df.write.format("delta").mode("append").save(path)


def merge_new(
    spark: SparkSession,
    df: DataFrame,
    warehouse: str,
    name: str,
    keys: Sequence[str],
    partition_by: Sequence[str] = (),
) -> int:
    """Insert the rows of ``df`` whose ``keys`` are not in the table yet; return how many.

    ``df`` must hold each key once. The first write creates the table. Rerunning with the same
    rows inserts nothing, so every writer built on this is idempotent.
    """
    return insert_new(spark, df, warehouse, name, keys, partition_by)[0]


def insert_new(
    spark: SparkSession,
    df: DataFrame,
    warehouse: str,
    name: str,
    keys: Sequence[str],
    partition_by: Sequence[str] = (),
    rows: int | None = None,
    stats_columns: Sequence[str] = (),
) -> tuple[int, bool]:
    """:func:`merge_new`, also saying whether this write created the table (it then holds
    exactly the rows of ``df``).

    Args:
        rows: how many rows ``df`` holds, when the caller knows: a table created from ``df``
            then reports it instead of reading its history.
        stats_columns: when given, a table created here keeps Delta's file statistics (for
            data skipping) on these columns only (``delta.dataSkippingStatsColumns``): hashes
            and free text gain nothing from them and cost time at every write.
    """
    path = table_path(warehouse, name)
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def attempt() -> tuple[int, bool]:
        if not exists(spark, path):
            created = _create(spark, df, path, partition_by, rows=rows, stats_columns=stats_columns)
            if created is not None:
                return created, True
        table = DeltaTable.forPath(spark, path)
        result = table.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()
        return _merge_metric(result, "num_inserted_rows"), False

    return _retrying(path, attempt)


def merge_upsert(
    spark: SparkSession,
    df: DataFrame,
    warehouse: str,
    name: str,
    keys: Sequence[str],
    delete_missing: bool = False,
) -> None:
    """Update matched rows, insert new ones and (optionally) delete rows absent from ``df``."""
    path = table_path(warehouse, name)
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def attempt() -> None:
        if not exists(spark, path) and _create(spark, df, path, (), rows=0) is not None:
            return
        m = (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(df.alias("s"), cond)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
        )
        if delete_missing:
            m = m.whenNotMatchedBySourceDelete()
        m.execute()

    _retrying(path, attempt)


def delete_matching(
    spark: SparkSession, df: DataFrame, warehouse: str, name: str, keys: Sequence[str]
) -> int:
    """Delete the table's rows whose ``keys`` are in ``df`` (a MERGE: one commit, none when
    the table does not exist); return how many. Deleting again deletes nothing."""
    path = table_path(warehouse, name)
    if not exists(spark, path):
        return 0
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def attempt() -> int:
        table = DeltaTable.forPath(spark, path)
        result = table.alias("t").merge(df.alias("s"), cond).whenMatchedDelete().execute()
        return _merge_metric(result, "num_deleted_rows")

    return _retrying(path, attempt)


def _create(
    spark: SparkSession,
    df: DataFrame,
    path: str,
    partition_by: Sequence[str],
    rows: int | None = None,
    stats_columns: Sequence[str] = (),
) -> int | None:
    """Create the table at ``path`` from ``df``; the rows written (``rows`` when the caller
    gives it: the table's history is then not read), or None when another writer created it
    first (then the caller MERGEs into it)."""
    writer = df.write.format("delta").mode("errorifexists")
    if stats_columns:
        writer = writer.option("delta.dataSkippingStatsColumns", ",".join(stats_columns))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    try:
        writer.save(path)
    except Exception as e:
        if conflict_kind(e) is not None or exists(spark, path):
            return None  # lost the race to create it: the table is there now
        raise
    if rows is not None:
        return rows
    # Version 0 is this write's commit (errorifexists): read its metrics, not the latest one.
    return _operation_metric(spark, path, 0, ("numOutputRows",))


def _merge_metric(result: DataFrame | None, name: str) -> int:
    """A count from the metrics DataFrame that this MERGE's ``execute()`` returned."""
    if result is None or name not in result.columns:
        raise RuntimeError(f"Delta MERGE returned no {name} metric (Delta >= 3 is required)")
    row = result.first()
    return int(row[name]) if row is not None and row[name] is not None else 0


def _operation_metric(spark: SparkSession, path: str, version: int, names: Sequence[str]) -> int:
    """A metric of the commit ``version`` of the table at ``path`` (not of the latest one)."""
    history = DeltaTable.forPath(spark, path).history()
    row = history.where(history["version"] == version).select("operationMetrics").first()
    metrics = (row["operationMetrics"] if row else None) or {}
    for n in names:
        if n in metrics:
            return int(metrics[n])
    return 0
