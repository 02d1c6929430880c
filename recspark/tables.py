"""The warehouse's table paths and the Delta read / overwrite / merge helpers.

Only stage ``run`` functions call these: transforms never do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from recspark.errors import ConfigError, StageNotReadyError

SILVER_EVENTS = "silver/events"
SILVER_QUARANTINE = "silver/quarantine"
SILVER_ITEMS = "silver/items"
SILVER_INTERACTIONS = "silver/interactions"
SILVER_INGEST_RUNS = "silver/ingest_runs"
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
    return bool(DeltaTable.isDeltaTable(spark, path))


def read(spark: SparkSession, warehouse: str, name: str) -> DataFrame:
    """Read a Delta table, or say which stage must run first."""
    path = table_path(warehouse, name)
    if not exists(spark, path):
        stage = WRITTEN_BY.get(name, "an earlier stage")
        raise StageNotReadyError(f"table {path} does not exist yet: run `recspark {stage}` first")
    return spark.read.format("delta").load(path)


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
    writer.save(table_path(warehouse, name))


def append(df: DataFrame, warehouse: str, name: str) -> None:
    df.write.format("delta").mode("append").save(table_path(warehouse, name))


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
    path = table_path(warehouse, name)
    if not exists(spark, path):
        writer = df.write.format("delta").mode("errorifexists")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(path)
        return _last_operation_metric(spark, path, ("numOutputRows",))
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    table = DeltaTable.forPath(spark, path)
    before = _version(table)
    table.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()
    if _version(table) == before:  # a MERGE that changes nothing commits nothing
        return 0
    return _last_operation_metric(spark, path, ("numTargetRowsInserted",))


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
    if not exists(spark, path):
        df.write.format("delta").mode("errorifexists").save(path)
        return
    cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
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


def _version(table: DeltaTable) -> int:
    row = table.history(1).select("version").first()
    return int(row["version"]) if row else -1


def _last_operation_metric(spark: SparkSession, path: str, names: Sequence[str]) -> int:
    row = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").first()
    metrics = (row["operationMetrics"] if row else None) or {}
    for n in names:
        if n in metrics:
            return int(metrics[n])
    return 0
