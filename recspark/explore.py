"""Helpers for notebooks: a look at the warehouse's tables and at one user's history beside
their recommendations. Notebooks call these and hold no logic of their own.

The ``history`` / ``recommendations`` transforms are pure; the functions taking ``spark`` and
``warehouse`` read the tables and return small pandas frames for display.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.schema import (
    CATEGORY,
    COUNT,
    ITEM_ID,
    LAST_TS,
    RANK,
    REASON,
    SCORE,
    TITLE,
    USER_ID,
    WEIGHT,
    require_columns,
)

# The tables shown by :func:`table_counts`: the registry's, in pipeline order.
TABLES: tuple[str, ...] = tuple(t.name for t in tables.TABLES)
HISTORY_COLUMNS: tuple[str, ...] = (ITEM_ID, TITLE, CATEGORY, WEIGHT, COUNT, LAST_TS)
RECS_COLUMNS: tuple[str, ...] = (RANK, ITEM_ID, TITLE, CATEGORY, SCORE, REASON)


def _item_labels(
    items: DataFrame, *, item_col: str, title_col: str, category_col: str
) -> DataFrame:
    cat = F.col(category_col) if category_col in items.columns else F.lit(None).cast("string")
    return items.select(
        F.col(item_col).alias(ITEM_ID), F.col(title_col).alias(TITLE), cat.alias(CATEGORY)
    ).dropDuplicates([ITEM_ID])


def history(
    interactions: DataFrame,
    items: DataFrame,
    user_id: str,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    title_col: str = TITLE,
    category_col: str = CATEGORY,
) -> DataFrame:
    """One user's interactions with the item titles.

    Args:
        interactions: ``silver/interactions``: ``user_id``, ``item_id``, ``weight``, ``count``,
            ``last_ts``.
        items: ``silver/items``: ``item_id``, ``title`` (and ``category`` when known).
        user_id: the user.

    Returns:
        ``item_id``, ``title``, ``category``, ``weight``, ``count``, ``last_ts`` of the user's
        interactions (items missing from the catalog keep a null title).
    """
    require_columns(
        interactions.columns, [user_col, item_col, WEIGHT, COUNT, LAST_TS], "interactions"
    )
    require_columns(items.columns, [item_col, title_col], "items")
    mine = interactions.where(F.col(user_col) == F.lit(user_id)).select(
        F.col(item_col).alias(ITEM_ID), WEIGHT, COUNT, LAST_TS
    )
    labels = _item_labels(items, item_col=item_col, title_col=title_col, category_col=category_col)
    return mine.join(labels, ITEM_ID, "left").select(*HISTORY_COLUMNS)


def recommendations(
    recs: DataFrame,
    items: DataFrame,
    user_id: str,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    title_col: str = TITLE,
    category_col: str = CATEGORY,
) -> DataFrame:
    """One user's recommendations with the item titles.

    Args:
        recs: ``gold/recommendations``: ``user_id``, ``rank``, ``item_id``, ``score``,
            ``reason``.
        items: ``silver/items``: ``item_id``, ``title`` (and ``category`` when known).
        user_id: the user.

    Returns:
        ``rank``, ``item_id``, ``title``, ``category``, ``score``, ``reason``.
    """
    require_columns(recs.columns, [user_col, RANK, item_col, SCORE, REASON], "recommendations")
    require_columns(items.columns, [item_col, title_col], "items")
    mine = recs.where(F.col(user_col) == F.lit(user_id)).select(
        RANK, F.col(item_col).alias(ITEM_ID), SCORE, REASON
    )
    labels = _item_labels(items, item_col=item_col, title_col=title_col, category_col=category_col)
    return mine.join(labels, ITEM_ID, "left").select(*RECS_COLUMNS)


def user_history_and_recs(
    spark: SparkSession, warehouse: str, user_id: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One user's history (newest first) and recommendations (by rank), as pandas.

    Reads ``silver/interactions``, ``silver/items`` and ``gold/recommendations``.
    """
    interactions = tables.read(spark, warehouse, tables.SILVER_INTERACTIONS)
    items = tables.read(spark, warehouse, tables.SILVER_ITEMS)
    recs = tables.read(spark, warehouse, tables.GOLD_RECOMMENDATIONS)
    hist = pd.DataFrame(history(interactions, items, user_id).toPandas())
    hist = hist.sort_values([LAST_TS, ITEM_ID], ascending=[False, True], kind="stable")
    rec = pd.DataFrame(recommendations(recs, items, user_id).toPandas())
    rec = rec.sort_values([RANK, ITEM_ID], kind="stable")
    return hist.reset_index(drop=True), rec.reset_index(drop=True)


def most_active_users(interactions: DataFrame, *, user_col: str = USER_ID) -> DataFrame:
    """Users by number of distinct items interacted with.

    Args:
        interactions: ``user_id``, ``item_id``.

    Returns:
        ``user_id``, ``items`` (the count); order with ``items`` desc, ``user_id`` asc.
    """
    require_columns(interactions.columns, [user_col, ITEM_ID], "interactions")
    return interactions.groupBy(F.col(user_col).alias(USER_ID)).agg(
        F.countDistinct(ITEM_ID).alias("items")
    )


def example_user(spark: SparkSession, warehouse: str) -> str:
    """The user with the most items in ``silver/interactions`` (ties: the smallest id)."""
    interactions = tables.read(spark, warehouse, tables.SILVER_INTERACTIONS)
    row = (
        most_active_users(interactions).orderBy(F.col("items").desc(), F.col(USER_ID).asc()).first()
    )
    if row is None:
        from recspark.errors import InputError

        raise InputError(f"{tables.ref(warehouse, tables.SILVER_INTERACTIONS)} is empty")
    return str(row[USER_ID])


def table_counts(spark: SparkSession, warehouse: str) -> pd.DataFrame:
    """``table``, ``rows`` of every pipeline table that exists in ``warehouse``."""
    rows = []
    for name in TABLES:
        if tables.exists(spark, tables.ref(warehouse, name)):
            rows.append((name, int(tables.read(spark, warehouse, name).count())))
    return pd.DataFrame(rows, columns=["table", "rows"])


def table_preview(spark: SparkSession, warehouse: str, name: str, n: int = 5) -> pd.DataFrame:
    """The first ``n`` rows of a warehouse table, as pandas."""
    return pd.DataFrame(tables.read(spark, warehouse, name).limit(n).toPandas())
