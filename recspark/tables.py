"""The pipeline's tables (one registry: name, schema, key, writer) and the Delta read /
overwrite / merge helpers.

A table is addressed through a :class:`TableRef` resolved from the warehouse setting: by path
under a warehouse folder (``<warehouse>/silver/events``), or by name when the warehouse is a
Unity Catalog schema (``catalog.schema.silver_events``: ``saveAsTable``, ``spark.table``,
``DeltaTable.forName``, MERGE by name). Only stage ``run`` functions call these: transforms
never do I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import Column, DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from recspark import schema as S
from recspark.errors import (
    ConfigError,
    SchemaError,
    StageNotReadyError,
)
from recspark.storage import Locations, is_uc_schema
from recspark.write_failures import conflict_kind, retrying, write_errors

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


@dataclass(frozen=True)
class TableSpec:
    """One table of the pipeline.

    Attributes:
        name: the table's name in recspark, ``layer/table`` (``silver/events``): its folder
            under a path warehouse; ``layer_table`` (``silver_events``) in a Unity Catalog schema.
        schema: its columns (:mod:`recspark.schema`); a write with a column outside it is
            refused.
        key: the columns that identify a row (each key at most once).
        partition_by: the partition columns of the table.
        written_by: the stage that writes it, for "run that stage first" messages.
        deletion_vectors: created with Delta's deletion vectors, for tables whose rows an
            incremental run updates or deletes in place (a MERGE then marks the old rows in
            their files instead of rewriting every file it touches).
        change_feed: created with Delta's change data feed, for tables whose changes a later
            stage reads (:func:`changes`) to redo only what they touched.
    """

    name: str
    schema: StructType
    key: tuple[str, ...]
    written_by: str
    partition_by: tuple[str, ...] = ()
    deletion_vectors: bool = False
    change_feed: bool = False

    @property
    def uc_name(self) -> str:
        """The table's name in a Unity Catalog schema (``silver_events``)."""
        return uc_table_name(self.name)


# Every table of the pipeline, in pipeline order: the one registry of names, schemas, keys
# and writers (notebooks, tests and the fault harness read it).
TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        SILVER_EVENTS,
        S.SILVER_EVENTS_SCHEMA,
        (S.EVENT_KEY,),
        "ingest",
        (S.EVENT_DATE,),
        deletion_vectors=True,
    ),
    TableSpec(SILVER_QUARANTINE, S.QUARANTINE_SCHEMA, (S.RECORD_KEY,), "ingest"),
    TableSpec(SILVER_ITEMS, S.SILVER_ITEMS_SCHEMA, (S.ITEM_ID,), "ingest"),
    TableSpec(
        SILVER_INTERACTIONS,
        S.INTERACTIONS_SCHEMA,
        (S.USER_ID, S.ITEM_ID),
        "ingest",
        deletion_vectors=True,
        change_feed=True,
    ),
    TableSpec(SILVER_INGEST_RUNS, S.INGEST_RUNS_SCHEMA, (S.RUN_ID, "input"), "ingest"),
    TableSpec(
        SILVER_EVENT_HOURS, S.EVENT_HOURS_SCHEMA, (S.USER_ID, S.HOUR, S.SOURCE_FILE), "ingest"
    ),
    TableSpec(
        GOLD_ITEM_EMBEDDINGS, S.ITEM_EMBEDDINGS_SCHEMA, (S.ITEM_ID,), "embed", change_feed=True
    ),
    TableSpec(GOLD_USER_EMBEDDINGS, S.USER_EMBEDDINGS_SCHEMA, (S.USER_ID,), "embed"),
    TableSpec(GOLD_ITEM_VECTORS, S.ITEM_VECTORS_SCHEMA, (S.ITEM_ID,), "train"),
    TableSpec(GOLD_USER_VECTORS, S.USER_VECTORS_SCHEMA, (S.USER_ID,), "train"),
    TableSpec(GOLD_RECOMMENDATIONS, S.RECOMMENDATIONS_SCHEMA, (S.USER_ID, S.RANK), "recommend"),
    TableSpec(GOLD_METRICS, S.METRICS_SCHEMA, (S.RUN_ID, S.MODEL, S.METRIC, S.K), "evaluate"),
)
REGISTRY: dict[str, TableSpec] = {t.name: t for t in TABLES}

# A table name part: a SQL identifier that needs no quoting.
_NAME_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _name_parts(name: str) -> list[str]:
    """The ``/``-separated parts of a table name; each must be a plain identifier."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ":" in name or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"table name {name!r} must be a relative path under the warehouse")
    return parts


def uc_table_name(name: str) -> str:
    """The Unity Catalog table name of ``name``: its parts joined by ``_``
    (``silver/events`` -> ``silver_events``).

    Raises:
        ConfigError: a part is not a plain SQL identifier (letters, digits, ``_``).
    """
    parts = _name_parts(name)
    bad = [p for p in parts if not _NAME_PART.match(p)]
    if bad:
        raise ConfigError(
            f"table name {name!r}: expected parts of letters, digits and '_' (a Unity Catalog "
            f"table name), found {bad}"
        )
    return "_".join(parts)


def table_path(warehouse: str, name: str) -> str:
    """``warehouse/name``; ``name`` must stay under the warehouse (no absolute path, no ``..``).

    Raises:
        ConfigError: ``warehouse`` is a Unity Catalog schema (its tables have names, not paths).
    """
    parts = _name_parts(name)
    if is_uc_schema(warehouse):
        raise ConfigError(
            f"table {name}: warehouse {warehouse!r} is a Unity Catalog schema, whose tables are "
            "addressed by name, not by path"
        )
    return warehouse.rstrip("/") + "/" + "/".join(parts)


@dataclass(frozen=True)
class TableRef:
    """Where one table is: a path (``by_name`` False) or a Unity Catalog / metastore name
    ``catalog.schema.table`` (``by_name`` True). ``str()`` gives it for messages."""

    name: str
    location: str
    by_name: bool

    def __str__(self) -> str:
        return self.location


def ref(where: Locations | str, name: str) -> TableRef:
    """The table ``name`` of a warehouse (a :class:`~recspark.storage.Locations` or the
    warehouse setting): by name in a Unity Catalog schema, else by path under the folder."""
    warehouse = where.warehouse if isinstance(where, Locations) else where
    if is_uc_schema(warehouse):
        return TableRef(name, f"{warehouse}.{uc_table_name(name)}", by_name=True)
    return TableRef(name, table_path(warehouse, name), by_name=False)


def written_by(name: str) -> str:
    """The stage that writes table ``name`` (for messages)."""
    spec = REGISTRY.get(name)
    return spec.written_by if spec else "an earlier stage"


def check_columns(df: DataFrame, table: TableRef) -> None:
    """Refuse to write a column that the table's registered schema does not have.

    Raises:
        SchemaError: ``df`` has columns outside the schema (a registered table only).
    """
    spec = REGISTRY.get(table.name)
    if spec is None:
        return
    expected = spec.schema.fieldNames()
    extra = [c for c in df.columns if c not in expected]
    if extra:
        raise SchemaError(
            f"table {table}: expected columns {expected}, found {list(df.columns)} "
            f"(not in the table's schema: {extra})"
        )


def exists(spark: SparkSession, table: TableRef | str) -> bool:
    """Whether the table exists (a Delta table with at least one commit for a path; a path
    may be given as a string).

    ``isDeltaTable`` answers from the session's cached log of the path without refreshing it:
    once it has seen an empty ``_delta_log`` (what a first write killed or failed before its
    commit leaves), it says False even after another process has created the table. Loading
    the table refreshes that log, so a False is checked that way.
    """
    if isinstance(table, TableRef):
        if table.by_name:
            return bool(spark.catalog.tableExists(table.location))
        path = table.location
    else:
        path = table
    if DeltaTable.isDeltaTable(spark, path):
        return True
    try:
        spark.read.format("delta").load(path)  # analysing the load refreshes the cached log
    except AnalysisException:
        return False
    return True


def _load(spark: SparkSession, table: TableRef) -> DataFrame:
    if table.by_name:
        return spark.read.table(table.location)
    return spark.read.format("delta").load(table.location)


def read_ref(spark: SparkSession, table: TableRef) -> DataFrame:
    """Read a Delta table, or say which stage must run first."""
    if not exists(spark, table):
        raise StageNotReadyError(
            f"table {table} does not exist yet: run `recspark {written_by(table.name)}` first"
        )
    return _load(spark, table)


def read(spark: SparkSession, warehouse: Locations | str, name: str) -> DataFrame:
    """Read table ``name`` of the warehouse, or say which stage must run first."""
    return read_ref(spark, ref(warehouse, name))


def delta_table(spark: SparkSession, table: TableRef) -> DeltaTable:
    """The :class:`DeltaTable` of ``table`` (``forName`` or ``forPath``)."""
    if table.by_name:
        return DeltaTable.forName(spark, table.location)
    return DeltaTable.forPath(spark, table.location)


def changes(spark: SparkSession, table: TableRef, start: int, end: int) -> DataFrame:
    """The rows that the commits ``start`` to ``end`` (inclusive) of ``table`` inserted,
    deleted or updated: Delta's change data feed, with its ``_change_type`` column (an update
    gives its row before and after). Lazy: a table that did not record change data for every
    one of those commits fails at the first action (:func:`change_data_gap` tells that
    apart)."""
    reader = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
        .option("endingVersion", end)
    )
    return reader.table(table.location) if table.by_name else reader.load(table.location)


# Delta's conditions for change data it cannot give: commits made before the feed was on, log
# entries or change files removed (log retention, VACUUM), a schema change in the range.
_CHANGE_DATA_GAPS = (
    "DELTA_MISSING_CHANGE_DATA",
    "DELTA_VERSIONS_NOT_CONTIGUOUS",
    "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE_DATA_SCHEMA",
    "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE_SCHEMA_CHANGE",
    "DELTA_FILE_NOT_FOUND",
    "DELTA_FILE_NOT_FOUND_DETAILED",
    "FAILED_READ_FILE",
)


def change_data_gap(e: BaseException) -> str | None:
    """The Delta condition when ``e`` says a table's change data cannot be read (see
    :data:`_CHANGE_DATA_GAPS`; the caller then reads the table itself), else None."""
    condition = e.getCondition() if isinstance(e, PySparkException) else None
    if condition is None:
        return None
    return condition if condition.split(".")[0] in _CHANGE_DATA_GAPS else None


def version(spark: SparkSession, table: TableRef) -> int:
    """The table's latest Delta version; -1 when its history is empty."""
    row = delta_table(spark, table).history(1).select("version").first()
    return int(row["version"]) if row is not None else -1


def table_id(spark: SparkSession, table: TableRef) -> str:
    """The table's Delta id: made when the table is created, kept by its later commits and by
    a copy of its folder; a table created again, or another warehouse's, has another."""
    row = delta_table(spark, table).detail().select("id").first()
    return str(row["id"]) if row is not None else ""


def last_user_metadata(spark: SparkSession, table: TableRef) -> str | None:
    """The ``userMetadata`` of the table's latest commit (None: none, or no table)."""
    if not exists(spark, table):
        return None
    row = delta_table(spark, table).history(1).select("userMetadata").first()
    return None if row is None or row["userMetadata"] is None else str(row["userMetadata"])


def _uc_schema(table: TableRef | str) -> str | None:
    """The metastore schema of a table addressed by name (None: by path)."""
    if isinstance(table, TableRef) and table.by_name:
        return table.location.rsplit(".", 1)[0]
    return None


def _save(writer: DataFrameWriter, table: TableRef) -> None:
    """Run ``writer`` into ``table``: ``saveAsTable`` by name, ``save`` by path."""
    if table.by_name:
        writer.saveAsTable(table.location)
    else:
        writer.save(table.location)


def _creating(writer: DataFrameWriter, table: TableRef) -> DataFrameWriter:
    """``writer`` with the table properties of a registered table it may create (Delta takes
    ``delta.*`` writer options as the new table's properties)."""
    spec = REGISTRY.get(table.name)
    if spec is not None and spec.deletion_vectors:
        writer = writer.option("delta.enableDeletionVectors", "true")
    if spec is not None and spec.change_feed:
        writer = writer.option("delta.enableChangeDataFeed", "true")
    return writer


def _partitioning(
    table: TableRef, df: DataFrame, partition_by: Sequence[str] | None
) -> Sequence[str]:
    """The partition columns: as given, else the registered table's when ``df`` has them all
    (a partial frame, as tests write, is written unpartitioned)."""
    if partition_by is not None:
        return partition_by
    spec = REGISTRY.get(table.name)
    if spec is None or not all(c in df.columns for c in spec.partition_by):
        return ()
    return spec.partition_by


def overwrite(
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    partition_by: Sequence[str] | None = None,
    replace_where: str | None = None,
    user_metadata: str | None = None,
) -> None:
    """Replace a table's contents atomically (one Delta commit; readers see old or new).
    ``user_metadata`` is kept in the commit's history (:func:`last_user_metadata`)."""
    table = ref(warehouse, name)
    check_columns(df, table)
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)
    if not exists(df.sparkSession, table):
        writer = _creating(writer, table)
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where).option("overwriteSchema", "false")
    partitions = _partitioning(table, df, partition_by)
    if partitions:
        writer = writer.partitionBy(*partitions)
    with write_errors(str(table), _uc_schema(table)):
        _save(writer, table)


def append(df: DataFrame, warehouse: Locations | str, name: str) -> None:
    """Append rows in one commit (blind appends never conflict with each other)."""
    table = ref(warehouse, name)
    check_columns(df, table)
    with write_errors(str(table), _uc_schema(table)):
        _save(df.write.format("delta").mode("append"), table)


# The most values of a column that a MERGE's condition lists to narrow the target's scan
# (:func:`merge_condition`): a batch's users, when so few. On the 10M-event
# ``silver/interactions`` (8.4M rows), a 1% batch's MERGE took 15.6-17.7 s with none, 9.7-11.9 s
# with its 1,002 users, 12.0-15.5 s with 10,000 values and 28-29 s with 100,000 (a plan that
# large costs more than the shuffle it saves): past this many, the MERGE lists none.
TARGET_IN_VALUES = 10_000


def target_in(df: DataFrame, column: str) -> dict[str, list[str]] | None:
    """``{column: its distinct non-null values in df}`` when there are at most
    :data:`TARGET_IN_VALUES`, else None: what a MERGE of ``df`` may narrow its target to. An
    action (a distinct of one column, cut at the limit): jobs only."""
    col = F.col(column)
    rows = df.where(col.isNotNull()).select(col).distinct().limit(TARGET_IN_VALUES + 1).collect()
    if len(rows) > TARGET_IN_VALUES:
        return None
    return {column: sorted(str(r[0]) for r in rows)}


def merge_condition(
    keys: Sequence[str], target_in: Mapping[str, Sequence[str]] | None = None
) -> Column:
    """A MERGE's condition: the ``keys`` equal (``t.k = s.k``); with ``target_in``, also each
    of its columns' target value among the given values.

    Those are conjuncts on the target alone, so Spark filters the target's scan with them
    before the MERGE's joins (a MERGE condition takes no subquery, hence the values). Every
    source row's value must be among them: the matches are then the same, and a MERGE that
    inserts (with deletion vectors: the source left outer join the target, which cannot
    broadcast the source) shuffles only the target rows that can match, not the whole table.
    How many values pay: :data:`TARGET_IN_VALUES`.
    """
    cond = F.expr(" AND ".join(f"t.`{k}` = s.`{k}`" for k in keys))
    for column, values in (target_in or {}).items():
        cond = cond & F.col(f"t.`{column}`").isin(list(values))
    return cond


def merge_new(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    partition_by: Sequence[str] | None = None,
) -> int:
    """Insert the rows of ``df`` whose ``keys`` are not in the table yet; return how many.

    ``df`` must hold each key once. The first write creates the table. Rerunning with the same
    rows inserts nothing, so every writer built on this is idempotent.
    """
    return insert_new(spark, df, warehouse, name, keys, partition_by)[0]


def insert_new(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    partition_by: Sequence[str] | None = None,
    rows: int | None = None,
    stats_columns: Sequence[str] = (),
) -> tuple[int, bool]:
    """:func:`merge_new`, also saying whether this write created the table (it then holds
    exactly the rows of ``df``).

    Args:
        partition_by: the partition columns of a table created here; None: the registered
            table's.
        rows: how many rows ``df`` holds, when the caller knows: a table created from ``df``
            then reports it instead of reading its history.
        stats_columns: when given, a table created here keeps Delta's file statistics (for
            data skipping) on these columns only (``delta.dataSkippingStatsColumns``): hashes
            and free text gain nothing from them and cost time at every write.
    """
    table = ref(warehouse, name)
    check_columns(df, table)
    partitions = _partitioning(table, df, partition_by)
    cond = merge_condition(keys)

    def attempt() -> tuple[int, bool]:
        if not exists(spark, table):
            created = _create(spark, df, table, partitions, rows=rows, stats_columns=stats_columns)
            if created is not None:
                return created, True
        target = delta_table(spark, table)
        result = target.alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()
        return _merge_metric(result, "num_inserted_rows"), False

    return retrying(str(table), _uc_schema(table), attempt)


@dataclass(frozen=True)
class Txn:
    """A Delta transaction identifier (``txnAppId``, ``txnVersion``): a write carrying one is
    skipped when the table already recorded that application at this version or a later one,
    so a batch written again (a rerun after a kill) changes nothing. Delta's idempotent writes:
    an appending writer's options, a DML statement's session settings."""

    app_id: str
    version: int


# The session settings that give a MERGE its transaction identifier (Delta >= 2.3).
_TXN_CONFS = ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion")
# The session setting that gives a DML statement's commit its ``userMetadata``.
_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


@contextmanager
def _session_confs(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set session settings for the body (a DML statement takes its commit's options from
    them); restore the previous values after."""
    saved = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, previous in saved.items():
            if previous is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, previous)


def append_once(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    txn: Txn,
    *,
    partition_by: Sequence[str] | None = None,
    stats_columns: Sequence[str] = (),
) -> bool:
    """Append ``df`` in one commit unless ``txn`` was written already (creating the table when
    it does not exist); return whether this call committed.

    Unlike :func:`merge_new`, this reads nothing of the table: the caller knows its rows are
    new but for an earlier attempt of the same ``txn``. Whether this call committed is read
    from the table's version, so no other writer may write the table meanwhile (the stream's
    one query per checkpoint is the only writer of its tables).

    Args:
        stats_columns: as :func:`insert_new`'s, for a table created here.
    """
    table = ref(warehouse, name)
    check_columns(df, table)
    partitions = _partitioning(table, df, partition_by)

    def attempt() -> bool:
        before = version(spark, table) if exists(spark, table) else -1
        writer = (
            df.write.format("delta")
            .mode("append")
            .option("txnAppId", txn.app_id)
            .option("txnVersion", str(txn.version))
        )
        if before < 0:
            writer = _creating(writer, table)
            if stats_columns:
                writer = writer.option("delta.dataSkippingStatsColumns", ",".join(stats_columns))
            if partitions:
                writer = writer.partitionBy(*partitions)
        _save(writer, table)
        return version(spark, table) > before

    return retrying(str(table), _uc_schema(table), attempt)


def merge_update(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    update: dict[str, str],
    txn: Txn,
    target_in: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """MERGE ``df`` into the table: a matched row gets the ``update`` expressions (SQL over
    ``t.`` and ``s.``, by column), a new key is inserted; skipped when ``txn`` was written
    already, so a non-idempotent update (a sum) is applied once. The first write creates the
    table from ``df``. ``target_in``: see :func:`merge_condition`."""
    table = ref(warehouse, name)
    check_columns(df, table)
    partitions = _partitioning(table, df, None)
    cond = merge_condition(keys, target_in)

    if not exists(spark, table):
        append_once(spark, df, warehouse, name, txn, partition_by=partitions)
        return

    exprs: dict[str, str | Column] = dict(update)

    def attempt() -> None:
        merge = (
            delta_table(spark, table)
            .alias("t")
            .merge(df.alias("s"), cond)
            .whenMatchedUpdate(set=exprs)
            .whenNotMatchedInsertAll()
        )
        with _session_confs(spark, {_TXN_CONFS[0]: txn.app_id, _TXN_CONFS[1]: str(txn.version)}):
            merge.execute()

    retrying(str(table), _uc_schema(table), attempt)


def merge_upsert(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    delete_missing: bool = False,
    target_in: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Update matched rows, insert new ones and (optionally) delete rows absent from ``df``.
    ``target_in``: see :func:`merge_condition` (not with ``delete_missing``, which concerns
    every target row)."""
    if delete_missing and target_in:
        raise ValueError("merge_upsert: target_in cannot narrow a MERGE that deletes missing rows")
    table = ref(warehouse, name)
    check_columns(df, table)
    partitions = _partitioning(table, df, None)
    cond = merge_condition(keys, target_in)

    def attempt() -> None:
        if not exists(spark, table) and _create(spark, df, table, partitions, rows=0) is not None:
            return
        m = (
            delta_table(spark, table)
            .alias("t")
            .merge(df.alias("s"), cond)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
        )
        if delete_missing:
            m = m.whenNotMatchedBySourceDelete()
        m.execute()

    retrying(str(table), _uc_schema(table), attempt)


def merge_replace(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    present: str,
    target_in: Mapping[str, Sequence[str]] | None = None,
    user_metadata: str | None = None,
) -> None:
    """Replace the table's rows of the keys in ``df``, in one MERGE (one commit): a key whose
    ``present`` column is null in ``df`` loses its row, any other gets ``df``'s row (updated
    or inserted). Rows of other keys are left as they are; the table must exist.
    ``target_in``: see :func:`merge_condition`; ``user_metadata`` as :func:`overwrite`'s."""
    table = ref(warehouse, name)
    check_columns(df, table)
    cond = merge_condition(keys, target_in)
    gone = f"s.`{present}` IS NULL"
    settings = {} if user_metadata is None else {_USER_METADATA_CONF: user_metadata}

    def attempt() -> None:
        merge = (
            delta_table(spark, table)
            .alias("t")
            .merge(df.alias("s"), cond)
            .whenMatchedDelete(condition=gone)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll(condition=f"NOT ({gone})")
        )
        with _session_confs(spark, settings):
            merge.execute()

    retrying(str(table), _uc_schema(table), attempt)


def delete_matching(
    spark: SparkSession,
    df: DataFrame,
    warehouse: Locations | str,
    name: str,
    keys: Sequence[str],
    target_in: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Delete the table's rows whose ``keys`` are in ``df`` (a MERGE: one commit, none when
    the table does not exist); return how many. Deleting again deletes nothing.
    ``target_in``: see :func:`merge_condition`."""
    table = ref(warehouse, name)
    if not exists(spark, table):
        return 0
    cond = merge_condition(keys, target_in)

    def attempt() -> int:
        merge = delta_table(spark, table).alias("t").merge(df.alias("s"), cond)
        return _merge_metric(merge.whenMatchedDelete().execute(), "num_deleted_rows")

    return retrying(str(table), _uc_schema(table), attempt)


def _create(
    spark: SparkSession,
    df: DataFrame,
    table: TableRef,
    partition_by: Sequence[str],
    rows: int | None = None,
    stats_columns: Sequence[str] = (),
) -> int | None:
    """Create ``table`` from ``df``; the rows written (``rows`` when the caller gives it: the
    table's history is then not read), or None when another writer created it first (then the
    caller MERGEs into it)."""
    writer = _creating(df.write.format("delta").mode("errorifexists"), table)
    if stats_columns:
        writer = writer.option("delta.dataSkippingStatsColumns", ",".join(stats_columns))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    try:
        _save(writer, table)
    except Exception as e:
        if conflict_kind(e) is not None or exists(spark, table):
            return None  # lost the race to create it: the table is there now
        raise
    if rows is not None:
        return rows
    # Version 0 is this write's commit (errorifexists): read its metrics, not the latest one.
    return _operation_metric(spark, table, 0, ("numOutputRows",))


def _merge_metric(result: DataFrame | None, name: str) -> int:
    """A count from the metrics DataFrame that this MERGE's ``execute()`` returned."""
    if result is None or name not in result.columns:
        raise RuntimeError(f"Delta MERGE returned no {name} metric (Delta >= 3 is required)")
    row = result.first()
    return int(row[name]) if row is not None and row[name] is not None else 0


def _operation_metric(
    spark: SparkSession, table: TableRef, version: int, names: Sequence[str]
) -> int:
    """A metric of the commit ``version`` of ``table`` (not of the latest one)."""
    history = delta_table(spark, table).history()
    row = history.where(history["version"] == version).select("operationMetrics").first()
    metrics = (row["operationMetrics"] if row else None) or {}
    for n in names:
        if n in metrics:
            return int(metrics[n])
    return 0
