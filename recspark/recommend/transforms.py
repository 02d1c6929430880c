"""Recommend transforms: the catalog to score, the lists of every user (scored users through
:mod:`recspark.recommend.scoring`, users without a vector from popular items) and the run columns.

Users without a vector (cold users) get popular items, within the category they interacted with
most when known. Every function here is pure: DataFrames and typed values in, DataFrame out. The
only driver-side data is the ``ItemIndex`` the job builds from the collected item catalog.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark.recommend.scoring import (
    REASON_POPULAR,
    REASON_POPULAR_CATEGORY,
    ItemIndex,
    ScoreParams,
    score_users,
)
from recspark.schema import (
    CATEGORY,
    GENERATED_AT,
    IS_COLD,
    ITEM_ID,
    MODEL_VERSION,
    POPULARITY,
    RANK,
    REASON,
    RECOMMENDATIONS_SCHEMA,
    RUN_ID,
    SCORE,
    SEEN,
    TITLE,
    USER_ID,
    VECTOR,
    WEIGHT,
    require_columns,
)


def item_catalog(
    item_vectors: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    *,
    item_col: str = ITEM_ID,
    vector_col: str = VECTOR,
    title_col: str = TITLE,
    category_col: str = CATEGORY,
    weight_col: str = WEIGHT,
) -> DataFrame:
    """Every known item with its vector, title, category and popularity.

    Args:
        item_vectors: needs ``item_id``, ``vector`` (one row per item).
        items: the catalog; needs ``item_id``, ``title``, ``category``.
        interactions: needs ``item_id``, ``weight``.

    Returns:
        ``item_id``, ``vector`` (null when the model has none), ``title``, ``category``,
        ``popularity`` (sum of weights, 0.0 without interactions) and ``is_cold`` (no
        interactions), one row per item in any of the three inputs.
    """
    require_columns(item_vectors.columns, [item_col, vector_col], "item vectors")
    require_columns(items.columns, [item_col, title_col, category_col], "items")
    require_columns(interactions.columns, [item_col, weight_col], "interactions")
    pop = interactions.groupBy(item_col).agg(F.sum(weight_col).cast("double").alias(POPULARITY))
    ids = (
        item_vectors.select(item_col)
        .unionByName(items.select(item_col))
        .unionByName(pop.select(item_col))
        .distinct()
    )
    return (
        ids.join(item_vectors.select(item_col, vector_col), item_col, "left")
        .join(items.select(item_col, title_col, category_col), item_col, "left")
        .join(pop, item_col, "left")
        .select(
            item_col,
            vector_col,
            title_col,
            category_col,
            F.coalesce(F.col(POPULARITY), F.lit(0.0)).alias(POPULARITY),
            F.col(POPULARITY).isNull().alias(IS_COLD),
        )
    )


def popular_fallback(
    users: DataFrame,
    interactions: DataFrame,
    catalog: DataFrame,
    *,
    k: int,
    exclude_seen: bool = True,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    category_col: str = CATEGORY,
    weight_col: str = WEIGHT,
) -> DataFrame:
    """Popular items for users the model cannot score, within their main category first.

    A user's category is the one with the largest summed interaction weight (ties: category
    ascending); items of that category come first, then the rest, each by popularity desc and
    item id asc.

    Args:
        users: needs ``user_id`` (one row per user to serve).
        interactions: needs ``user_id``, ``item_id``, ``weight`` (history and exclusions).
        catalog: ``item_catalog`` output: ``item_id``, ``category``, ``popularity``.
        k: list length.
        exclude_seen: leave out items the user interacted with.

    Returns:
        ``user_id``, ``rank``, ``item_id``, ``score`` (= popularity), ``reason``.
    """
    user_cat = (
        interactions.join(catalog.select(item_col, category_col), item_col)
        .where(F.col(category_col).isNotNull())
        .groupBy(user_col, category_col)
        .agg(F.sum(weight_col).alias("_w"))
        .withColumn(
            "_r",
            F.row_number().over(
                Window.partitionBy(user_col).orderBy(F.desc("_w"), F.asc(category_col))
            ),
        )
        .where(F.col("_r") == 1)
        .select(user_col, F.col(category_col).alias("_user_cat"))
    )
    cands = (
        users.select(user_col)
        .distinct()
        .join(user_cat, user_col, "left")
        .crossJoin(catalog.select(item_col, F.col(category_col).alias("_item_cat"), POPULARITY))
    )
    if exclude_seen:
        cands = cands.join(
            interactions.select(user_col, item_col), [user_col, item_col], "left_anti"
        )
    in_cat = F.coalesce(F.col("_item_cat") == F.col("_user_cat"), F.lit(False))
    order = Window.partitionBy(user_col).orderBy(in_cat.desc(), F.desc(POPULARITY), F.asc(item_col))
    return (
        cands.withColumn(RANK, F.row_number().over(order))
        .where(F.col(RANK) <= k)
        .select(
            F.col(user_col).alias(USER_ID),
            F.col(RANK).cast("int").alias(RANK),
            F.col(item_col).alias(ITEM_ID),
            F.col(POPULARITY).cast("double").alias(SCORE),
            F.when(in_cat, F.concat(F.lit(REASON_POPULAR_CATEGORY), F.col("_user_cat")))
            .otherwise(F.lit(REASON_POPULAR))
            .alias(REASON),
        )
    )


def recommend(
    user_vectors: DataFrame,
    interactions: DataFrame,
    catalog: DataFrame,
    index: ItemIndex,
    params: ScoreParams,
    *,
    model_version: str,
    run_id: str,
    generated_at: datetime,
    users: DataFrame | None = None,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    vector_col: str = VECTOR,
) -> DataFrame:
    """Exact top-K recommendations for every user, in the contract's table shape.

    Args:
        user_vectors: needs ``user_id``, ``vector`` (array<float>, one row per user).
        interactions: needs ``user_id``, ``item_id``, ``weight``: the history (exclusions,
            reasons, categories) and the users to cover.
        catalog: ``item_catalog`` output (fallback pool and categories).
        index: the broadcast item vectors built from ``catalog``.
        params: k, exclusion, cold slots, blocks.
        model_version: written on every row.
        run_id: written on every row.
        generated_at: written on every row.
        users: the users to serve (``user_id``); default every user in ``interactions`` or
            ``user_vectors``.

    Returns:
        ``RECOMMENDATIONS_SCHEMA`` columns: min(k, eligible) rows per user, ranks 1..n.
    """
    require_columns(user_vectors.columns, [user_col, vector_col], "user vectors")
    require_columns(interactions.columns, [user_col, item_col, WEIGHT], "interactions")
    if users is None:
        users = interactions.select(user_col).unionByName(user_vectors.select(user_col)).distinct()
    else:
        users = users.select(user_col).distinct()
    hist = interactions.groupBy(user_col).agg(F.collect_list(item_col).alias(SEEN))
    warm_in = (
        user_vectors.select(user_col, vector_col)
        .join(users, user_col, "left_semi")
        .join(hist, user_col, "left")
        .select(
            F.col(user_col).alias(USER_ID),
            F.col(vector_col).alias(VECTOR),
            F.col(SEEN),
        )
    )
    warm = score_users(warm_in, index, params)
    cold_users = users.join(user_vectors.select(user_col), user_col, "left_anti")
    cold = popular_fallback(
        cold_users,
        interactions,
        catalog,
        k=params.k,
        exclude_seen=params.exclude_seen,
        user_col=user_col,
        item_col=item_col,
    )
    out = warm.unionByName(cold)
    return with_run_columns(
        out, model_version=model_version, run_id=run_id, generated_at=generated_at
    )


def with_run_columns(
    scored: DataFrame, *, model_version: str, run_id: str, generated_at: datetime
) -> DataFrame:
    """Add ``model_version``, ``run_id``, ``generated_at`` and cast to RECOMMENDATIONS_SCHEMA.

    Args:
        scored: needs ``user_id``, ``rank``, ``item_id``, ``score``, ``reason``.
    """
    extra: dict[str, Any] = {
        MODEL_VERSION: F.lit(model_version),
        RUN_ID: F.lit(run_id),
        GENERATED_AT: F.lit(generated_at).cast("timestamp"),
    }
    cols = [
        (extra[f.name] if f.name in extra else F.col(f.name)).cast(f.dataType).alias(f.name)
        for f in RECOMMENDATIONS_SCHEMA.fields
    ]
    return scored.select(*cols)
