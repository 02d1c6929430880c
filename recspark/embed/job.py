"""``recspark embed``: item and user embeddings from ``silver/items`` and ``silver/interactions``.

Reads the silver tables, embeds only the items whose text hash or model changed, MERGEs them
into ``gold/item_embeddings`` on ``item_id`` (dropping items no longer in the catalog), and
rewrites ``gold/user_embeddings`` (broadcasting the item vectors when they fit
``embed.user_broadcast_max_mb``) when ``silver/interactions`` or ``gold/item_embeddings``
changed since its last rewrite. A rerun on unchanged inputs embeds nothing and commits
nothing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config
from recspark.embed.model import EncodeSettings, encode_settings
from recspark.embed.transforms import (
    embed_items,
    fits_broadcast,
    prepare_items,
    user_embeddings,
)
from recspark.errors import DependencyError, ModelError
from recspark.schema import (
    EMBEDDING,
    ITEM_ID,
    MODEL_NAME,
    TEXT,
    TEXT_HASH,
    USER_ID,
    WEIGHT,
    require_columns,
)

ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
_WORKER_MODEL_ERROR = re.compile(r"recspark\.errors\.ModelError: (.*)")
_WORKER_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


def _count(df: Any) -> int:
    return int(df.count())


def _read_inputs(spark: SparkSession, wh: str) -> tuple[DataFrame, DataFrame, DataFrame | None]:
    """``silver/items``, ``silver/interactions`` and ``gold/item_embeddings`` (None before the
    first run), each checked for the columns embed needs."""
    raw_items = tables.read(spark, wh, tables.SILVER_ITEMS)
    require_columns(
        raw_items.columns, [ITEM_ID, TEXT, TEXT_HASH], str(tables.ref(wh, tables.SILVER_ITEMS))
    )
    interactions = tables.read(spark, wh, tables.SILVER_INTERACTIONS)
    require_columns(
        interactions.columns,
        [USER_ID, ITEM_ID, WEIGHT],
        str(tables.ref(wh, tables.SILVER_INTERACTIONS)),
    )
    existing = None
    if tables.exists(spark, tables.ref(wh, tables.GOLD_ITEM_EMBEDDINGS)):
        existing = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
        require_columns(
            existing.columns,
            [ITEM_ID, EMBEDDING, MODEL_NAME, TEXT_HASH],
            str(tables.ref(wh, tables.GOLD_ITEM_EMBEDDINGS)),
        )
    return raw_items, interactions, existing


def _run_model(spark: SparkSession, embedded: DataFrame) -> int:
    """The one pass that runs the model over ``embedded`` (persisted by the caller); a worker's
    model or missing-module failure becomes one line.

    Raises:
        ModelError: the model failed to load or run on an executor.
        DependencyError: the executors' Python lacks a module.
    """
    try:
        return _count(embedded)
    except PySparkException as e:
        found = _WORKER_MODEL_ERROR.search(str(e))
        if found:
            raise ModelError(found.group(1).strip()) from e
        missing = _WORKER_MISSING_MODULE.search(str(e))
        if missing:
            python = spark.sparkContext.pythonExec
            raise DependencyError(
                f"the executors' Python ({python}) has no module '{missing.group(1)}': "
                "point PYSPARK_PYTHON / spark.pyspark.python at the environment that has "
                "recspark, torch and transformers"
            ) from e
        raise


def _merge_embeddings(
    spark: SparkSession,
    wh: str,
    *,
    embedded: DataFrame,
    items: DataFrame,
    existing: DataFrame | None,
    items_embedded: int,
    items_removed: int,
) -> None:
    """MERGE the new and changed items into ``gold/item_embeddings``; with removed items, MERGE
    the full desired table so that the MERGE also deletes them. Nothing changed: no commit."""
    if existing is None:
        tables.merge_upsert(spark, embedded, wh, tables.GOLD_ITEM_EMBEDDINGS, [ITEM_ID])
    elif items_removed:
        kept = existing.join(items.select(ITEM_ID), on=ITEM_ID, how="left_semi").join(
            embedded.select(ITEM_ID), on=ITEM_ID, how="left_anti"
        )
        full = kept.select(*embedded.columns).unionByName(embedded)
        tables.merge_upsert(
            spark, full, wh, tables.GOLD_ITEM_EMBEDDINGS, [ITEM_ID], delete_missing=True
        )
    elif items_embedded:
        tables.merge_upsert(spark, embedded, wh, tables.GOLD_ITEM_EMBEDDINGS, [ITEM_ID])


@contextmanager
def _arrow_batch_size(spark: SparkSession, size: int) -> Iterator[None]:
    """Set the Arrow batch size of the pandas UDF for the body; restore the previous value."""
    previous = spark.conf.get(ARROW_BATCH_CONF, None)
    spark.conf.set(ARROW_BATCH_CONF, str(size))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, previous)


def _item_counts(raw_items: DataFrame) -> tuple[int, int, int]:
    """Rows of ``silver/items``, rows with an item id, and distinct item ids."""
    counts = raw_items.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.col(ITEM_ID)).alias("with_id"),
        F.countDistinct(F.col(ITEM_ID)).alias("ids"),
    ).first()
    if not counts:
        return 0, 0, 0
    return int(counts["rows"]), int(counts["with_id"]), int(counts["ids"])


def _embed(
    spark: SparkSession,
    cfg: Config,
    settings: EncodeSettings,
    items: DataFrame,
    existing: DataFrame | None,
    items_removed: int,
) -> tuple[int, float]:
    """Embed new and changed items and MERGE them (and the removals) into
    ``gold/item_embeddings``; return the texts embedded and the seconds the model took."""
    ecfg = cfg.embed
    num_partitions = ecfg.num_partitions or spark.sparkContext.defaultParallelism
    with _arrow_batch_size(spark, ecfg.arrow_batch_size):
        embedded = embed_items(
            items, settings, existing=existing, num_partitions=num_partitions
        ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            t0 = time.perf_counter()
            # The MERGE reads the persisted rows (it scans its source twice, which must not
            # run the model twice).
            items_embedded = _run_model(spark, embedded)
            seconds = time.perf_counter() - t0
            _merge_embeddings(
                spark,
                cfg.warehouse,
                embedded=embedded,
                items=items,
                existing=existing,
                items_embedded=items_embedded,
                items_removed=items_removed,
            )
        finally:
            embedded.unpersist()
    return items_embedded, seconds


# What gold/user_embeddings is computed from, besides its input tables' versions: a change of
# the formula must rewrite the table even if its inputs did not change.
USER_VECTORS = "weighted-mean/l2/v1"


def users_inputs(interactions_version: int, items_version: int) -> str:
    """The ``gold/user_embeddings`` commit's metadata: the formula and the versions of the
    tables it was computed from (pure)."""
    return json.dumps(
        {
            "user_vectors": USER_VECTORS,
            tables.SILVER_INTERACTIONS: interactions_version,
            tables.GOLD_ITEM_EMBEDDINGS: items_version,
        },
        sort_keys=True,
    )


def _refresh_user_embeddings(
    spark: SparkSession, cfg: Config, items_total: int
) -> tuple[bool, bool | None]:
    """Rewrite ``gold/user_embeddings`` unless its last commit was computed from the versions
    of ``silver/interactions`` and ``gold/item_embeddings`` that are current: a rerun with
    nothing new computes no vector and commits nothing. The versions are taken before the
    tables are read, so a commit that lands in between makes the next run rewrite (never
    skip). Returns whether it rewrote and whether the item vectors were broadcast (None:
    not rewritten)."""
    wh = cfg.warehouse
    inputs = users_inputs(
        tables.version(spark, tables.ref(wh, tables.SILVER_INTERACTIONS)),
        tables.version(spark, tables.ref(wh, tables.GOLD_ITEM_EMBEDDINGS)),
    )
    target = tables.ref(wh, tables.GOLD_USER_EMBEDDINGS)
    if tables.last_user_metadata(spark, target) == inputs:
        return False, None
    interactions = tables.read(spark, wh, tables.SILVER_INTERACTIONS)
    gold_items = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
    first = gold_items.select(F.size(EMBEDDING).alias("dim")).first()
    broadcast = fits_broadcast(
        items_total, int(first["dim"]) if first else 0, cfg.embed.user_broadcast_max_mb
    )
    tables.overwrite(
        user_embeddings(interactions, gold_items, broadcast_items=broadcast),
        wh,
        tables.GOLD_USER_EMBEDDINGS,
        user_metadata=inputs,
    )
    return True, broadcast


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Embed new and changed items, refresh user embeddings, return a summary.

    Raises:
        ModelError: the model folder is missing, incomplete or unreadable.
        StageNotReadyError: ``silver/items`` or ``silver/interactions`` does not exist.
        SchemaError: an input table lacks a needed column.
    """
    settings = encode_settings(cfg.embed)  # checks the model folder before any Spark work
    wh = cfg.warehouse
    raw_items, interactions, existing = _read_inputs(spark, wh)
    items = prepare_items(raw_items)
    item_rows, rows_with_id, items_total = _item_counts(raw_items)
    removed = existing.join(items, on=ITEM_ID, how="left_anti") if existing is not None else None
    items_removed = _count(removed) if removed is not None else 0
    items_embedded, embed_seconds = _embed(spark, cfg, settings, items, existing, items_removed)

    t0 = time.perf_counter()
    users_rewritten, broadcast = _refresh_user_embeddings(spark, cfg, items_total)
    users_seconds = time.perf_counter() - t0
    users = _count(tables.read(spark, wh, tables.GOLD_USER_EMBEDDINGS))
    users_total = _count(interactions.select(USER_ID).distinct())
    return {
        "model_name": settings.model_name,
        "model_path": settings.model_path,
        "items_total": items_total,
        "duplicate_item_rows": rows_with_id - items_total,  # one row kept per item id
        "item_rows_without_id": item_rows - rows_with_id,  # dropped
        "items_embedded": items_embedded,
        "items_unchanged": items_total - items_embedded,
        "items_removed": items_removed,
        "users": users,
        "users_without_embedding": users_total - users,
        "embed_seconds": round(embed_seconds, 3),
        "users_rewritten": users_rewritten,
        "users_seconds": round(users_seconds, 3),
        "users_broadcast": broadcast,
        "texts_per_second": round(items_embedded / embed_seconds, 1) if embed_seconds > 0 else None,
    }
