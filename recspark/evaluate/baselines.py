"""Baselines scored on the same split as recspark: popularity, Spark ALS (implicit) and
content only (the user's mean text embedding against the items' text embeddings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyspark.ml.feature import IndexToString, StringIndexer, StringIndexerModel
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark.embed.transforms import user_embeddings
from recspark.evaluate.metrics import unit_vectors
from recspark.numbering import top_n
from recspark.schema import EMBEDDING, ITEM_ID, POPULARITY, RANK, SCORE, USER_ID, VECTOR, WEIGHT

_UIDX = "_uidx"
_IIDX = "_iidx"


@dataclass(frozen=True)
class AlsParams:
    """One point of the ALS grid."""

    rank: int
    reg: float
    max_iter: int = 10
    alpha: float = 1.0
    seed: int = 42


def als_grid(
    ranks: tuple[int, ...], regs: tuple[float, ...], max_iter: int, alpha: float, seed: int
) -> list[AlsParams]:
    """Every (rank, reg) pair, in config order (pure)."""
    return [AlsParams(r, g, max_iter, alpha, seed) for r in ranks for g in regs]


AlsPoint = tuple[int, float, float]  # rank, reg, alpha


def als_next(scores: Mapping[AlsPoint, float], *, max_rank: int) -> AlsPoint | None:
    """The next (rank, reg, alpha) to try after the scored ones, or None (pure).

    From the best point (ties: the smaller rank, then the smaller reg and alpha), step beyond
    each edge of the tried points it lies on, in this order: double the rank when it is the
    largest rank tried (up to ``max_rank``); reg times 3 when it is the largest reg tried with
    that rank and alpha, divided by 3 when the smallest; alpha divided by 10 when it is the
    smallest alpha tried with that rank and reg, times 10 when the largest. The first such
    point not yet tried; None when the best point is inside what was tried.
    """
    if not scores:
        return None
    rank, reg, alpha = max(scores, key=lambda p: (scores[p], -p[0], -p[1], -p[2]))
    regs = [g for r, g, a in scores if (r, a) == (rank, alpha)]
    alphas = [a for r, g, a in scores if (r, g) == (rank, reg)]
    steps: list[AlsPoint] = []
    if rank == max(p[0] for p in scores) and rank * 2 <= max_rank:
        steps.append((rank * 2, reg, alpha))
    if reg == max(regs):
        steps.append((rank, _round(reg * 3), alpha))
    if reg == min(regs):
        steps.append((rank, _round(reg / 3), alpha))
    if alpha == min(alphas):
        steps.append((rank, reg, _round(alpha / 10)))
    if alpha == max(alphas):
        steps.append((rank, reg, _round(alpha * 10)))
    return next((p for p in steps if p not in scores), None)


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def popularity_recs(
    train: DataFrame,
    users: DataFrame,
    *,
    k: int,
    exclude_seen: bool = True,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
) -> DataFrame:
    """The ``k`` items with most training users, without the user's own (ties: item id asc).

    Args:
        train: needs ``user_id``, ``item_id`` (training interactions).
        users: needs ``user_id`` (who to recommend for).
        k: list length.
        exclude_seen: leave out items the user interacted with in ``train``.

    Returns:
        ``user_id``, ``item_id``, ``rank``, ``score`` (number of training users).
    """
    pop = train.groupBy(item_col).agg(F.countDistinct(user_col).cast("double").alias(POPULARITY))
    seen_n = train.groupBy(user_col).agg(F.count(F.lit(1)).alias("_n_seen"))
    # No user needs more than the k + (most items seen by one user) most popular items.
    most_seen = seen_n.agg(F.max("_n_seen").alias("_most_seen")) if exclude_seen else None
    longest = F.lit(k) + (F.coalesce(F.col("_most_seen"), F.lit(0)) if exclude_seen else F.lit(0))
    pop = top_n(
        pop if most_seen is None else pop.crossJoin(F.broadcast(most_seen)),
        key=item_col,
        order=[F.desc(POPULARITY), F.asc(item_col)],
        n=longest,
        rank_col="_prank",
    )
    u = users.select(user_col).distinct().join(seen_n, user_col, "left")
    limit = F.lit(k) + (F.coalesce(F.col("_n_seen"), F.lit(0)) if exclude_seen else F.lit(0))
    cands = u.join(pop, F.col("_prank") <= limit)
    if exclude_seen:
        cands = cands.join(train.select(user_col, item_col), [user_col, item_col], "left_anti")
    w = Window.partitionBy(user_col).orderBy(F.asc("_prank"))
    return (
        cands.withColumn(RANK, F.row_number().over(w))
        .where(F.col(RANK) <= k)
        .select(
            user_col, item_col, F.col(RANK).cast("int").alias(RANK), F.col(POPULARITY).alias(SCORE)
        )
    )


def content_vectors(
    train: DataFrame,
    embeddings: DataFrame,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    embedding_col: str = EMBEDDING,
    broadcast_items: bool = True,
) -> tuple[DataFrame, DataFrame]:
    """The content-only model: no learning, the items' text embeddings alone.

    Item vector: the item's text embedding at unit length; user vector: the mean of the item
    vectors of the user's training items, at unit length. Their dot product ranks items as the
    cosine between the user's mean text embedding and each item's does, so the recommend
    kernel gives the cosine top-K. The users' means are embed's
    (:func:`~recspark.embed.transforms.user_embeddings`, each distinct training item weighing
    1): each user's rows summed by numpy in one task, no shuffle of joined vectors.

    Args:
        train: needs ``user_id``, ``item_id`` (training interactions).
        embeddings: needs ``item_id``, ``embedding``.
        broadcast_items: broadcast the item vectors to the users' join (the caller sizes it,
            as embed does with :func:`~recspark.embed.transforms.fits_broadcast`).

    Returns:
        ``(user_vectors, item_vectors)``: ``user_id`` / ``item_id`` with ``vector``
        (array<float>), ready for the recommend kernel.
    """
    items = unit_vectors(embeddings, item_col=item_col, embedding_col=embedding_col)
    seen = (
        train.select(F.col(user_col).alias(USER_ID), F.col(item_col).alias(ITEM_ID))
        .distinct()
        .withColumn(WEIGHT, F.lit(1.0))
    )
    means = user_embeddings(seen, items, broadcast_items=broadcast_items)
    users = means.select(F.col(USER_ID).alias(user_col), F.col(EMBEDDING).alias(VECTOR))
    return users, items.select(
        F.col(ITEM_ID).alias(item_col), F.col(EMBEDDING).cast("array<float>").alias(VECTOR)
    )


def als_factors(
    train: DataFrame,
    params: AlsParams,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    weight_col: str = WEIGHT,
) -> tuple[DataFrame, DataFrame]:
    """Fit implicit-feedback ALS and return its factors keyed by the original ids.

    Args:
        train: needs ``user_id``, ``item_id``, ``weight`` (confidence = 1 + alpha * weight).
        params: rank, regularisation, iterations, alpha, seed.

    Returns:
        ``(user_vectors, item_vectors)``: ``user_id`` / ``item_id`` with ``vector``
        (array<float>), ready for the recommend kernel (score = dot product).
    """
    users_ix = _indexer(train, user_col, _UIDX)
    items_ix = _indexer(train, item_col, _IIDX)
    data = items_ix.transform(users_ix.transform(train.select(user_col, item_col, weight_col)))
    als = ALS(
        rank=params.rank,
        regParam=params.reg,
        maxIter=params.max_iter,
        alpha=params.alpha,
        implicitPrefs=True,
        userCol=_UIDX,
        itemCol=_IIDX,
        ratingCol=weight_col,
        coldStartStrategy="drop",
        seed=params.seed,
    )
    model = als.fit(
        data.select(
            F.col(_UIDX).cast("int").alias(_UIDX),
            F.col(_IIDX).cast("int").alias(_IIDX),
            F.col(weight_col).cast("float").alias(weight_col),
        )
    )
    return _factors(model.userFactors, users_ix, user_col), _factors(
        model.itemFactors, items_ix, item_col
    )


def _indexer(df: DataFrame, col: str, out: str) -> StringIndexerModel:
    return StringIndexer(inputCol=col, outputCol=out, stringOrderType="alphabetAsc").fit(df)


def _factors(factors: DataFrame, indexer: StringIndexerModel, col: str) -> DataFrame:
    back = IndexToString(inputCol="_idx", outputCol=col, labels=indexer.labels)
    return back.transform(
        factors.select(F.col("id").cast("double").alias("_idx"), F.col("features").alias(VECTOR))
    ).select(col, F.col(VECTOR).cast("array<float>").alias(VECTOR))
