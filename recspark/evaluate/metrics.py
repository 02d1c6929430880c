"""Ranking metrics at K computed in Spark (definitions as ``pyspark.mllib.RankingMetrics``).

For a user with relevant (held-out) set ``R`` and recommended list ``p`` (ranks 1..n):
- precision@K = |p[:K] ∩ R| / K
- recall@K = |p[:K] ∩ R| / |R|
- ndcg@K = sum over hits at rank r <= K of 1/log2(r+1), divided by
  sum_{i=1..min(|R|, K)} 1/log2(i+1)
- map@K = sum over hits at rank r <= K of (hits up to r) / r, divided by min(|R|, K)
- hit_rate@K = 1 when any of p[:K] is in R
Each is averaged over every user with a non-empty ``R`` (users without recommendations score
0). Over the whole run: coverage@K = distinct recommended items / catalog items, and, when the
cold items are given, cold_share@K (share of recommended rows that are cold items),
cold_items@K (how many distinct cold items were recommended) and cold_recall@K (recall@K of the
held-out cold items, averaged over the users who have one). With the items' text embeddings,
diversity@K is the intra-list diversity: the mean pairwise cosine distance of the text
embeddings within each list, averaged over lists of at least two items.
"""

from __future__ import annotations

from pyspark.ml.feature import Normalizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark.schema import EMBEDDING, ITEM_ID, METRIC, RANK, USER_ID, K, require_columns

PER_USER_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "hit_rate")
VALUE = "value"


def per_user_metrics(
    recs: DataFrame,
    truth: DataFrame,
    *,
    k: int,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    rank_col: str = RANK,
) -> DataFrame:
    """Per-user precision, recall, NDCG, AP and hit at ``k``.

    Args:
        recs: needs ``user_id``, ``item_id``, ``rank`` (1 = best; one row per listed item).
        truth: needs ``user_id``, ``item_id`` (the held-out items).
        k: the cut-off.

    Returns:
        one row per user of ``truth``: ``user_id``, ``n_relevant``, ``hits`` and the columns
        of ``PER_USER_METRICS``.
    """
    require_columns(recs.columns, [user_col, item_col, rank_col], "recommendations")
    require_columns(truth.columns, [user_col, item_col], "held-out interactions")
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    rel = truth.select(user_col, item_col).distinct()
    n_rel = rel.groupBy(user_col).agg(F.count(F.lit(1)).alias("n_relevant"))
    hits = (
        recs.where(F.col(rank_col) <= k)
        .select(user_col, item_col, rank_col)
        .join(rel, [user_col, item_col], "inner")
        .withColumn(
            "_cum",
            F.row_number().over(Window.partitionBy(user_col).orderBy(rank_col, item_col)),
        )
        .groupBy(user_col)
        .agg(
            F.count(F.lit(1)).alias("hits"),
            F.sum(1.0 / F.log2(F.col(rank_col) + 1.0)).alias("_dcg"),
            F.sum(F.col("_cum") / F.col(rank_col)).alias("_ap_sum"),
        )
    )
    idcg = F.aggregate(
        F.sequence(F.lit(1), F.least(F.col("n_relevant"), F.lit(k)).cast("int")),
        F.lit(0.0),
        lambda acc, i: acc + 1.0 / F.log2(i.cast("double") + 1.0),
    )
    hits_c = F.coalesce(F.col("hits"), F.lit(0)).cast("long")
    return n_rel.join(hits, user_col, "left").select(
        user_col,
        "n_relevant",
        hits_c.alias("hits"),
        (hits_c / F.lit(float(k))).alias("precision"),
        (hits_c / F.col("n_relevant")).alias("recall"),
        (F.coalesce(F.col("_dcg"), F.lit(0.0)) / idcg).alias("ndcg"),
        (
            F.coalesce(F.col("_ap_sum"), F.lit(0.0))
            / F.least(F.col("n_relevant"), F.lit(k)).cast("double")
        ).alias("map"),
        (hits_c > 0).cast("double").alias("hit_rate"),
    )


def unit_vectors(
    embeddings: DataFrame, *, item_col: str = ITEM_ID, embedding_col: str = EMBEDDING
) -> DataFrame:
    """Each item's embedding scaled to length 1 (items with a zero or missing one dropped).

    Args:
        embeddings: needs ``item_id``, ``embedding`` (array of numbers).

    Returns:
        ``item_id``, ``embedding`` (array<double>, unit length).
    """
    require_columns(embeddings.columns, [item_col, embedding_col], "item embeddings")
    v = F.col(embedding_col).cast("array<double>")
    squares = F.aggregate(v, F.lit(0.0), lambda acc, x: acc + x * x)
    kept = embeddings.where(squares > 0).select(
        F.col(item_col).alias(ITEM_ID), array_to_vector(v).alias("_v")
    )
    # Spark's Normalizer, not ``transform(v, x -> x / norm)``: the optimizer inlines the norm
    # into that lambda, which then sums the vector again for each of its values (d^2 a row;
    # about 450 s on 2 idle cores for 50,000 vectors of 384 at 10M events).
    unit = Normalizer(p=2.0, inputCol="_v", outputCol="_u").transform(kept)
    return unit.select(ITEM_ID, vector_to_array(F.col("_u")).alias(EMBEDDING))


def vector_sum(vectors: DataFrame, key: str, vector_col: str) -> DataFrame:
    """Per ``key``: the element-wise sum of ``vector_col`` arrays (equal lengths) and the count.

    Returns:
        ``key``, ``_sum`` (array<double>), ``_n`` (long).
    """
    grouped = vectors.groupBy(key).agg(
        F.collect_list(F.col(vector_col).cast("array<double>")).alias("_xs"),
        F.count(F.lit(1)).alias("_n"),
    )
    zero = F.transform(F.col("_xs")[0], lambda _x: F.lit(0.0))
    summed = F.aggregate(F.col("_xs"), zero, lambda acc, x: F.zip_with(acc, x, lambda a, b: a + b))
    return grouped.select(key, summed.alias("_sum"), "_n")


def intra_list_diversity(
    recs: DataFrame,
    embeddings: DataFrame,
    *,
    k: int,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    rank_col: str = RANK,
) -> DataFrame:
    """Mean pairwise cosine distance of the text embeddings within each top-``k`` list.

    For unit vectors ``u_1..u_n`` the mean of ``u_i . u_j`` over pairs ``i != j`` is
    ``(|sum u|^2 - n) / (n (n - 1))``, so a list needs only the sum of its vectors (no pairs).

    Args:
        recs: needs ``user_id``, ``item_id``, ``rank``.
        embeddings: ``unit_vectors`` output (``item_id``, ``embedding`` of length 1).

    Returns:
        one row: ``diversity`` (double; null when no list has two items with an embedding).
    """
    require_columns(recs.columns, [user_col, item_col, rank_col], "recommendations")
    top = recs.where(F.col(rank_col) <= k).select(
        F.col(user_col).alias("_user"), F.col(item_col).alias(ITEM_ID)
    )
    vecs = top.join(F.broadcast(embeddings.select(ITEM_ID, EMBEDDING)), ITEM_ID, "inner")
    sums = vector_sum(vecs, "_user", EMBEDDING).where(F.col("_n") >= 2)
    sq = F.aggregate(F.col("_sum"), F.lit(0.0), lambda acc, x: acc + x * x)
    n = F.col("_n").cast("double")
    per_list = 1.0 - (sq - n) / (n * (n - 1.0))
    return sums.agg(F.avg(per_list).alias("diversity"))


def ranking_metrics(
    recs: DataFrame,
    truth: DataFrame,
    catalog: DataFrame,
    *,
    k: int,
    cold_items: DataFrame | None = None,
    embeddings: DataFrame | None = None,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    rank_col: str = RANK,
) -> DataFrame:
    """Every metric at ``k`` for one model, one row per metric.

    Args:
        recs: needs ``user_id``, ``item_id``, ``rank`` (lists for at least the users of
            ``truth``; other users' rows count only towards coverage).
        truth: needs ``user_id``, ``item_id`` (the held-out items).
        catalog: needs ``item_id`` (the items that could be recommended).
        k: the cut-off.
        cold_items: optional ``item_id`` of items with no training interactions (adds
            ``cold_share``, ``cold_items`` and ``cold_recall``).
        embeddings: optional ``unit_vectors`` output (adds ``diversity``).

    Returns:
        ``metric`` (string), ``k`` (int), ``value`` (double).
    """
    users = per_user_metrics(
        recs, truth, k=k, user_col=user_col, item_col=item_col, rank_col=rank_col
    )
    means = users.agg(*[F.avg(m).alias(m) for m in PER_USER_METRICS])
    top = recs.where(F.col(rank_col) <= k).select(user_col, item_col)
    n_catalog = catalog.select(item_col).distinct().agg(F.count(F.lit(1)).alias("_n_catalog"))
    n_recommended = top.select(item_col).distinct().agg(F.count(F.lit(1)).alias("_n_rec"))
    row = (
        means.crossJoin(n_catalog)
        .crossJoin(n_recommended)
        .withColumn("coverage", F.col("_n_rec") / F.col("_n_catalog"))
    )
    names = [*PER_USER_METRICS, "coverage"]
    if cold_items is not None:
        cols = {"user_col": user_col, "item_col": item_col, "rank_col": rank_col}
        row = row.crossJoin(cold_metrics(recs, truth, cold_items, k=k, **cols))
        names += list(COLD_METRICS)
    if embeddings is not None:
        div = intra_list_diversity(
            recs, embeddings, k=k, user_col=user_col, item_col=item_col, rank_col=rank_col
        )
        row = row.crossJoin(div)
        names += ["diversity"]
    return _stack(row, names, k)


def _stack(row: DataFrame, names: list[str], k: int) -> DataFrame:
    """One row of metric columns ``names`` as rows of ``metric``, ``k``, ``value`` (a missing
    value is 0)."""
    stacked = F.explode(
        F.array(
            *[
                F.struct(
                    F.lit(n).alias(METRIC),
                    F.coalesce(F.col(n).cast("double"), F.lit(0.0)).alias(VALUE),
                )
                for n in names
            ]
        )
    )
    return row.select(stacked.alias("_m")).select(
        F.col("_m." + METRIC).alias(METRIC),
        F.lit(k).cast("int").alias(K),
        F.col("_m." + VALUE).alias(VALUE),
    )


COLD_METRICS = ("cold_share", "cold_items", "cold_recall")


def cold_metrics(
    recs: DataFrame,
    truth: DataFrame,
    cold_items: DataFrame,
    *,
    k: int,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    rank_col: str = RANK,
) -> DataFrame:
    """One row: ``cold_share`` (the share of top-``k`` slots holding a cold item),
    ``cold_items`` (distinct cold items recommended) and ``cold_recall`` (recall@k of the
    held-out cold items).

    Args:
        recs: needs ``user_id``, ``item_id``, ``rank``; truth: ``user_id``, ``item_id``;
            cold_items: ``item_id`` of the items without training interactions.
    """
    top = recs.where(F.col(rank_col) <= k).select(user_col, item_col)
    cold = cold_items.select(item_col).distinct().withColumn("_cold", F.lit(1))
    cold_row = top.join(cold, item_col, "left").agg(
        (F.count("_cold") / F.count(F.lit(1))).alias("cold_share"),
        F.countDistinct(F.when(F.col("_cold") == 1, F.col(item_col)))
        .cast("double")
        .alias("cold_items"),
    )
    cold_truth = truth.join(cold.select(item_col), item_col, "left_semi")
    cold_recall = per_user_metrics(
        recs, cold_truth, k=k, user_col=user_col, item_col=item_col, rank_col=rank_col
    ).agg(F.avg("recall").alias("cold_recall"))
    return cold_row.crossJoin(cold_recall)
