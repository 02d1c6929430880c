"""``recspark embed``: item and user embeddings from ``silver/items`` and ``silver/interactions``.

Reads the silver tables, embeds only the items whose text hash or model changed, MERGEs them
into ``gold/item_embeddings`` on ``item_id`` (dropping items no longer in the catalog), and
brings ``gold/user_embeddings`` up to date (broadcasting the item vectors when they fit
``embed.user_broadcast_max_mb``) when ``silver/interactions`` or ``gold/item_embeddings``
changed since its last commit: only the users their change data touches, or every user. A
rerun on unchanged inputs embeds nothing and commits nothing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
    refreshed_user_embeddings,
    touched_users,
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
# The tables gold/user_embeddings is computed from, in its commits' metadata.
USERS_FROM = (tables.SILVER_INTERACTIONS, tables.GOLD_ITEM_EMBEDDINGS)


@dataclass(frozen=True)
class TableState:
    """A Delta table's id (kept for its life, new when it is created again) and version."""

    id: str
    version: int


def users_inputs(interactions: TableState, items: TableState) -> str:
    """The ``gold/user_embeddings`` commit's metadata: the formula and the states of the
    tables it was computed from (pure)."""
    states = dict(zip(USERS_FROM, (interactions, items), strict=True))
    return json.dumps(
        {"user_vectors": USER_VECTORS, **{n: asdict(st) for n, st in states.items()}},
        sort_keys=True,
    )


@dataclass(frozen=True)
class UsersPlan:
    """What embed does with ``gold/user_embeddings``.

    Attributes:
        action: ``skip`` (its inputs are those of its last commit), ``changes`` (recompute the
            users that the input tables' changes touch) or ``full`` (rewrite every user).
        reason: why, for the run's summary.
        changes: per input table that changed, the first and last version whose changes to
            read (the last is the one its metadata records).
    """

    action: Literal["skip", "changes", "full"]
    reason: str
    changes: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _recorded(metadata: str | None) -> dict[str, TableState] | None:
    """The input states a commit's metadata records for the current formula, else None."""
    try:
        found = json.loads(metadata) if metadata else None
        if not isinstance(found, dict) or found.get("user_vectors") != USER_VECTORS:
            return None
        return {n: TableState(str(found[n]["id"]), int(found[n]["version"])) for n in USERS_FROM}
    except (ValueError, TypeError, KeyError):
        return None


def plan_users(last: str | None, current: str) -> UsersPlan:
    """Plan the users' vectors from the metadata of ``gold/user_embeddings``' last commit
    (``last``; None: no table) and the current inputs (``current``, :func:`users_inputs`)
    (pure)."""
    if last == current:
        return UsersPlan("skip", "inputs unchanged since the last commit")
    before, now = _recorded(last), _recorded(current)
    if before is None or now is None:
        return UsersPlan("full", "no earlier inputs recorded for this formula")
    changes: dict[str, tuple[int, int]] = {}
    for name in USERS_FROM:
        old, new = before[name], now[name]
        if old.id != new.id:
            return UsersPlan("full", f"{name} was created again")
        if new.version < old.version:
            return UsersPlan("full", f"{name} went back from version {old.version}")
        if new.version > old.version:
            changes[name] = (old.version + 1, new.version)
    return UsersPlan("changes", "inputs changed since the last commit", changes)


def _state(spark: SparkSession, wh: str, name: str) -> TableState:
    table = tables.ref(wh, name)
    return TableState(tables.table_id(spark, table), tables.version(spark, table))


@dataclass(frozen=True)
class UsersRefresh:
    """What the users' part of a run did (for its summary)."""

    action: Literal["skip", "changes", "full"]
    reason: str
    changed: int | None = None  # users recomputed from the changes
    broadcast: bool | None = None  # item vectors broadcast (None: nothing computed)


def _touched(spark: SparkSession, wh: str, plan: UsersPlan, interactions: DataFrame) -> DataFrame:
    """The users that the plan's changes touch (lazy: a table without change data for those
    commits fails at the first action)."""

    def changed(name: str) -> DataFrame | None:
        if name not in plan.changes:
            return None
        return tables.changes(spark, tables.ref(wh, name), *plan.changes[name])

    return touched_users(
        interactions, changed(tables.SILVER_INTERACTIONS), changed(tables.GOLD_ITEM_EMBEDDINGS)
    )


def _refresh_changed(
    spark: SparkSession,
    cfg: Config,
    plan: UsersPlan,
    inputs: str,
    *,
    interactions: DataFrame,
    gold_items: DataFrame,
    broadcast: bool,
) -> UsersRefresh | str:
    """Recompute the users that the inputs' changes (``plan.changes``) touch and MERGE them
    into ``gold/user_embeddings`` (one commit, recording ``inputs``); or, without that, the
    reason to rewrite every user: the change data cannot be read, or it touches more than
    ``embed.users_changed_max_fraction`` of the stored users."""
    wh = cfg.warehouse
    users: DataFrame | None = None
    try:
        try:
            # Delta checks for change data when the read is planned, or at the count.
            users = _touched(spark, wh, plan, interactions).persist(StorageLevel.MEMORY_AND_DISK)
            changed = _count(users)
        except PySparkException as e:
            gap = tables.change_data_gap(e)
            if gap is None:
                raise
            return f"the inputs' change data cannot be read ({gap})"
        stored = _count(tables.read(spark, wh, tables.GOLD_USER_EMBEDDINGS))
        if changed > cfg.embed.users_changed_max_fraction * stored:
            return f"{changed} of {stored} stored users changed"
        tables.merge_replace(
            spark,
            refreshed_user_embeddings(interactions, gold_items, users, broadcast_items=broadcast),
            wh,
            tables.GOLD_USER_EMBEDDINGS,
            [USER_ID],
            present=EMBEDDING,
            target_in=tables.target_in(users, USER_ID),
            user_metadata=inputs,
        )
        return UsersRefresh("changes", plan.reason, changed, broadcast)
    finally:
        if users is not None:
            users.unpersist()


def _refresh_user_embeddings(spark: SparkSession, cfg: Config, items_total: int) -> UsersRefresh:
    """Bring ``gold/user_embeddings`` up to date with ``silver/interactions`` and
    ``gold/item_embeddings`` (:func:`plan_users`): nothing when neither changed since its last
    commit; else only the users their change data touches, while they are at most
    ``embed.users_changed_max_fraction`` of the stored users (one MERGE); else every user (one
    overwrite). The commit records the inputs' states, taken before they are read, so a commit
    that lands in between is read again by the next run (never missed)."""
    wh = cfg.warehouse
    inputs = users_inputs(*(_state(spark, wh, n) for n in USERS_FROM))
    target = tables.ref(wh, tables.GOLD_USER_EMBEDDINGS)
    plan = plan_users(tables.last_user_metadata(spark, target), inputs)
    if plan.action == "skip":
        return UsersRefresh("skip", plan.reason)
    interactions = tables.read(spark, wh, tables.SILVER_INTERACTIONS)
    gold_items = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
    first = gold_items.select(F.size(EMBEDDING).alias("dim")).first()
    broadcast = fits_broadcast(
        items_total, int(first["dim"]) if first else 0, cfg.embed.user_broadcast_max_mb
    )
    reason = plan.reason
    if plan.action == "changes":
        done = _refresh_changed(
            spark,
            cfg,
            plan,
            inputs,
            interactions=interactions,
            gold_items=gold_items,
            broadcast=broadcast,
        )
        if isinstance(done, UsersRefresh):
            return done
        reason = done
    tables.overwrite(
        user_embeddings(interactions, gold_items, broadcast_items=broadcast),
        wh,
        tables.GOLD_USER_EMBEDDINGS,
        user_metadata=inputs,
    )
    return UsersRefresh("full", reason, None, broadcast)


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
    refresh = _refresh_user_embeddings(spark, cfg, items_total)
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
        "users_refresh": refresh.action,
        "users_refresh_reason": refresh.reason,
        "users_changed": refresh.changed,
        "users_seconds": round(users_seconds, 3),
        "users_broadcast": refresh.broadcast,
        "texts_per_second": round(items_embedded / embed_seconds, 1) if embed_seconds > 0 else None,
    }
