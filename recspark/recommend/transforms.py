"""Recommend transforms: exact top-K for every user with the torch kernel inside Spark.

Users are partitioned across executors (``mapInPandas`` over the user DataFrame's
partitions); the item vectors travel once per executor as a broadcast ``ItemIndex``. Inside a
task, users are scored in blocks of ``user_block_size`` against item blocks of
``item_block_size``, each score block reduced to group maxima while in cache and the exact
top-K found among the best groups (``recspark.recommend.kernel.topk_scores``), so a task never
holds more than one ``user_block_size x item_block_size`` score matrix.

Users without a vector (cold users) get popular items, within the category they interacted with
most when known. Every function here is pure: DataFrames and typed values in, DataFrame out. The
only driver-side data is the ``ItemIndex`` the job builds from the collected item catalog.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

from recspark.errors import SchemaError
from recspark.recommend.config import RecommendConfig
from recspark.recommend.kernel import (
    GROUP_SIZE,
    ITEM_BLOCK_SIZE,
    USER_BLOCK_SIZE,
    exclusion_pairs,
    mmr_order,
    pick_device,
    reserve_slots,
    topk_scores,
)
from recspark.schema import (
    CATEGORY,
    EMBEDDING,
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

# What a scored row looks like before the run columns are added.
SCORED_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(RANK, IntegerType(), False),
        StructField(ITEM_ID, StringType(), False),
        StructField(SCORE, DoubleType(), False),
        StructField(REASON, StringType(), False),
    ]
)

REASON_LIKED = "because you liked {title}"
REASON_NEW = "new item, because you liked {title}"
REASON_PROFILE = "matches your profile"
REASON_NEW_PROFILE = "new item that matches your profile"
REASON_POPULAR_CATEGORY = "popular in "  # + category
REASON_POPULAR = "popular with all users"


@dataclass(frozen=True)
class ItemIndex:
    """The scored items, in item-id order: what every scoring task needs (broadcast once).

    Attributes:
        ids: item ids, sorted ascending; position = item index in the kernel.
        vectors: ``(items, d)`` float32 item vectors.
        titles: a display title per item (the item id when the catalog has none).
        is_cold: ``(items,)`` bool, True for items with no interactions.
        text: ``(items, t)`` unit-length text embeddings (zeros where an item has none), for
            the diversity re-rank; None when not loaded.
    """

    ids: tuple[str, ...]
    vectors: np.ndarray
    titles: tuple[str, ...]
    is_cold: np.ndarray
    text: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @staticmethod
    def from_pandas(
        pdf: pd.DataFrame,
        *,
        item_col: str = ITEM_ID,
        vector_col: str = VECTOR,
        title_col: str = TITLE,
        is_cold_col: str = IS_COLD,
        text_col: str = EMBEDDING,
    ) -> ItemIndex:
        """Build the index from a collected ``item_catalog`` (rows without a vector skipped);
        with a ``text_col`` column (text embeddings, null where missing), ``text`` too.

        Raises:
            SchemaError: when a column is missing or vectors differ in length.
        """
        require_columns(list(pdf.columns), [item_col, vector_col], "item catalog")
        pdf = pdf[pdf[vector_col].notna()].sort_values(item_col, kind="stable")
        ids = tuple(str(i) for i in pdf[item_col])
        if len(set(ids)) != len(ids):
            raise SchemaError("item vectors: expected one vector per item_id, found duplicates")
        if ids:
            lengths = {len(v) for v in pdf[vector_col]}
            if len(lengths) != 1:
                raise SchemaError(
                    f"item vectors: expected one vector length, found {sorted(lengths)}"
                )
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in pdf[vector_col]])
        else:
            vectors = np.zeros((0, 0), dtype=np.float32)
        titles = (
            tuple(
                str(t) if isinstance(t, str) and t else i
                for t, i in zip(pdf[title_col], ids, strict=True)
            )
            if title_col in pdf.columns
            else ids
        )
        cold = (
            pdf[is_cold_col].fillna(False).to_numpy(dtype=bool)
            if is_cold_col in pdf.columns
            else np.zeros(len(ids), dtype=bool)
        )
        text = None
        if text_col in pdf.columns:
            given = [v for v in pdf[text_col] if v is not None and len(v) > 0]
            width = len(given[0]) if given else 0
            text = np.zeros((len(ids), width), dtype=np.float32)
            for row, v in enumerate(pdf[text_col]):
                if v is not None and len(v) == width and width > 0:
                    text[row] = np.asarray(v, dtype=np.float32)
            norms = np.linalg.norm(text, axis=1, keepdims=True)
            text = text / np.where(norms > 0, norms, 1.0)
        return ItemIndex(ids=ids, vectors=vectors, titles=titles, is_cold=cold, text=text)


@dataclass(frozen=True)
class ScoreParams:
    """How the scoring tasks work (typed, picklable)."""

    k: int = 10
    exclude_seen: bool = True
    cold_item_slots: int = 0
    user_block_size: int = USER_BLOCK_SIZE
    item_block_size: int = ITEM_BLOCK_SIZE
    group_size: int = GROUP_SIZE
    torch_threads: int = 1
    reasons: bool = True
    device: str = "cpu"
    diversity: float = 0.0
    diversity_candidates: int = 3


def score_params(rc: RecommendConfig, **overrides: Any) -> ScoreParams:
    """The kernel's parameters from the recommend config (pure): the one place they are
    built, for the recommend stage and for every model evaluate scores with the kernel.

    Args:
        rc: the ``recommend`` section.
        overrides: ScoreParams fields that differ from the config (evaluate's ``k``, ...).
    """
    params = ScoreParams(
        k=rc.k,
        exclude_seen=rc.exclude_seen,
        cold_item_slots=rc.cold_item_slots,
        user_block_size=rc.user_block_size,
        item_block_size=rc.item_block_size,
        group_size=rc.group_size,
        torch_threads=rc.torch_threads,
        reasons=rc.reasons,
        device=pick_device(rc.device).type,
        diversity=rc.diversity,
        diversity_candidates=rc.diversity_candidates,
    )
    return dataclasses.replace(params, **overrides)


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


def _explain(
    rec: np.ndarray, hist: np.ndarray, unit: np.ndarray, titles: tuple[str, ...], cold: np.ndarray
) -> list[str]:
    """For each recommended item index, the reason naming the most similar history item."""
    if hist.size == 0:
        return [REASON_NEW_PROFILE if cold[r] else REASON_PROFILE for r in rec]
    sims = unit[rec] @ unit[hist].T
    if hist.size > 1:  # an item is not its own reason (when seen items are not excluded)
        sims[rec[:, None] == hist[None, :]] = -np.inf
    best = hist[np.argmax(sims, axis=1)]  # first of equals: lowest item index (hist sorted)
    return [
        (REASON_NEW if cold[r] else REASON_LIKED).format(title=titles[b])
        for r, b in zip(rec, best, strict=True)
    ]


def diversify(
    vals: torch.Tensor, idx: torch.Tensor, text: np.ndarray, k: int, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank each row's candidates (``vals``/``idx``, best first; ``-inf`` = none) with
    :func:`~recspark.recommend.kernel.mmr_order` over their ``text`` vectors, keeping ``k``.

    Returns:
        ``(values, indices)`` of shape ``(users, k)`` in MMR order (each item keeps its score).
    """
    v, ix = vals.cpu().numpy(), idx.cpu().numpy()
    out_v = np.full((v.shape[0], k), -np.inf, dtype=v.dtype)
    out_i = np.zeros((v.shape[0], k), dtype=ix.dtype)
    for r in range(v.shape[0]):
        valid = np.isfinite(v[r])
        cand_v, cand_i = v[r][valid], ix[r][valid]
        order = mmr_order(cand_v, text[cand_i], k, lam)
        out_v[r, : len(order)] = cand_v[order]
        out_i[r, : len(order)] = cand_i[order]
    return torch.from_numpy(out_v).to(vals.device), torch.from_numpy(out_i).to(idx.device)


def score_batches(
    batches: Iterator[pd.DataFrame],
    index: ItemIndex,
    params: ScoreParams,
    *,
    user_col: str = USER_ID,
    vector_col: str = VECTOR,
    seen_col: str = SEEN,
) -> Iterator[pd.DataFrame]:
    """Top-K rows for batches of users (the body of the ``mapInPandas`` task; no Spark).

    Args:
        batches: pandas frames with ``user_id``, ``vector`` and ``seen`` (item ids or None).
        index: the scored items.
        params: k, exclusion, cold slots, block sizes, diversity (applied when ``index`` has
            text embeddings: the top ``diversity_candidates * k`` are re-ranked by MMR).

    Yields:
        frames with ``user_id``, ``rank`` (1..n), ``item_id``, ``score``, ``reason``.
    """
    torch.set_num_threads(1)  # torch_threads > 1: that many threads score user blocks
    pos = {item: i for i, item in enumerate(index.ids)}
    ids = np.asarray(index.ids, dtype=object)
    device = pick_device(params.device)
    items_t = torch.from_numpy(index.vectors).to(device)
    cold_t = torch.from_numpy(index.is_cold).to(device)
    norms = np.linalg.norm(index.vectors, axis=1, keepdims=True)
    unit = index.vectors / np.where(norms > 0, norms, 1.0)
    any_cold = bool(index.is_cold.any())
    mmr = params.diversity > 0 and index.text is not None
    pool_k = params.k * params.diversity_candidates if mmr else params.k
    for pdf in batches:
        if pdf.empty:
            continue
        vec_list = [np.asarray(v, dtype=np.float32) for v in pdf[vector_col]]
        lengths = {v.shape[0] for v in vec_list}
        if lengths != {index.dim}:
            raise SchemaError(
                f"user vectors: expected length {index.dim} (the item vectors'), found "
                f"{sorted(lengths)}"
            )
        users_t = torch.from_numpy(np.stack(vec_list)).to(device)
        seen = [
            np.array(sorted({pos[i] for i in s if i in pos}), dtype=np.int64)
            if isinstance(s, list | np.ndarray)
            else np.empty(0, dtype=np.int64)
            for s in pdf[seen_col]
        ]
        rows, cols = exclusion_pairs(seen) if params.exclude_seen else (None, None)
        vals, idx = topk_scores(
            users_t,
            items_t,
            pool_k,
            exclude_rows=rows,
            exclude_items=cols,
            user_block_size=params.user_block_size,
            item_block_size=params.item_block_size,
            group_size=params.group_size,
            workers=params.torch_threads,
        )
        if mmr and index.text is not None:
            vals, idx = diversify(vals, idx, index.text, params.k, params.diversity)
        if params.cold_item_slots > 0 and any_cold:
            cvals, cidx = topk_scores(
                users_t,
                items_t,
                min(params.cold_item_slots, params.k),
                exclude_rows=rows,
                exclude_items=cols,
                candidates=cold_t,
                user_block_size=params.user_block_size,
                item_block_size=params.item_block_size,
                group_size=params.group_size,
                workers=params.torch_threads,
            )
            vals, idx = reserve_slots(vals, idx, cvals, cidx, cold_t, params.cold_item_slots)
        v, ix = vals.cpu().numpy(), idx.cpu().numpy()
        valid = np.isfinite(v)
        n_per_user = valid.sum(axis=1)
        user_ids = pdf[user_col].to_numpy(dtype=object)
        flat_items = ix[valid]
        if params.reasons:
            reasons: list[str] = []
            for r in range(len(user_ids)):
                reasons.extend(
                    _explain(ix[r][valid[r]], seen[r], unit, index.titles, index.is_cold)
                )
        else:
            reasons = [""] * int(n_per_user.sum())
        yield pd.DataFrame(
            {
                USER_ID: np.repeat(user_ids, n_per_user),
                RANK: np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in n_per_user]),
                ITEM_ID: ids[flat_items] if flat_items.size else np.empty(0, dtype=object),
                SCORE: v[valid].astype(np.float64),
                REASON: reasons,
            }
        )


def score_users(users: DataFrame, index: ItemIndex, params: ScoreParams) -> DataFrame:
    """Exact top-K for users with a vector: ``mapInPandas`` over the users' partitions.

    The ``index`` is broadcast once per executor; each task scores its users in blocks.

    Args:
        users: needs ``user_id``, ``vector`` (array<float>) and ``seen`` (array<string> of
            item ids, or null).
        index: the scored items.
        params: k, exclusion, cold slots, block sizes.

    Returns:
        ``user_id``, ``rank``, ``item_id``, ``score``, ``reason`` (``SCORED_SCHEMA``).
    """
    require_columns(users.columns, [USER_ID, VECTOR, SEEN], "users to score")
    bc = users.sparkSession.sparkContext.broadcast(index)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return score_batches(batches, bc.value, params)

    selected = users.select(USER_ID, VECTOR, SEEN)
    return selected.mapInPandas(score, SCORED_SCHEMA)  # type: ignore[arg-type]


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
