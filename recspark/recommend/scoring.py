"""Exact top-K scoring of users against an item index, inside Spark tasks.

Users are partitioned across executors (``mapInPandas`` over the user DataFrame's
partitions); the item vectors travel once per executor as a broadcast :class:`ItemIndex`.
Inside a task, users are scored in blocks of ``user_block_size`` against item blocks of
``item_block_size``, each score block reduced to group maxima while in cache and the exact
top-K found among the best groups (``recspark.recommend.kernel.topk_scores``), so a task never
holds more than one ``user_block_size x item_block_size`` score matrix. Lists are optionally
re-ranked for diversity (MMR) and given reserved cold-item slots; each entry gets a reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

from recspark.errors import SchemaError
from recspark.recommend.config import RecommendConfig, cold_settings
from recspark.recommend.kernel import (
    GROUP_SIZE,
    ITEM_BLOCK_SIZE,
    USER_BLOCK_SIZE,
    exclusion_pairs,
    pick_device,
    topk_scores,
)
from recspark.recommend.rerank import backfill, mmr_order, reserve_slots
from recspark.schema import (
    EMBEDDING,
    IS_COLD,
    ITEM_ID,
    RANK,
    REASON,
    SCORE,
    SEEN,
    TITLE,
    USER_ID,
    VECTOR,
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
    score_cold_items: bool = True


def score_params(
    rc: RecommendConfig, cold_choice: Mapping[str, Any] | None = None, **overrides: Any
) -> ScoreParams:
    """The kernel's parameters from the recommend config (pure): the one place they are
    built, for the recommend stage and for every model evaluate scores with the kernel.

    Args:
        rc: the ``recommend`` section.
        cold_choice: the model's ``cold_items`` record, for the cold-item settings left null
            (:func:`~recspark.recommend.config.cold_settings`).
        overrides: ScoreParams fields that differ from the config (evaluate's ``k``, ...).
    """
    score_cold, cold_slots = cold_settings(rc, cold_choice)
    params = ScoreParams(
        k=rc.k,
        exclude_seen=rc.exclude_seen,
        cold_item_slots=cold_slots,
        user_block_size=rc.user_block_size,
        item_block_size=rc.item_block_size,
        group_size=rc.group_size,
        torch_threads=rc.torch_threads,
        reasons=rc.reasons,
        device=pick_device(rc.device).type,
        diversity=rc.diversity,
        diversity_candidates=rc.diversity_candidates,
        score_cold_items=score_cold,
    )
    return dataclasses.replace(params, **overrides)


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


@dataclass(frozen=True)
class _Scorer:
    """The items of an :class:`ItemIndex` as a scoring task holds them (built once per task)."""

    index: ItemIndex
    params: ScoreParams
    pos: dict[str, int]  # item id -> row of the index
    ids: np.ndarray  # row -> item id (object)
    items_t: torch.Tensor
    cold_t: torch.Tensor
    unit: np.ndarray  # unit item vectors (the reasons' similarities)

    @staticmethod
    def of(index: ItemIndex, params: ScoreParams) -> _Scorer:
        device = pick_device(params.device)
        norms = np.linalg.norm(index.vectors, axis=1, keepdims=True)
        return _Scorer(
            index=index,
            params=params,
            pos={item: i for i, item in enumerate(index.ids)},
            ids=np.asarray(index.ids, dtype=object),
            items_t=torch.from_numpy(index.vectors).to(device),
            cold_t=torch.from_numpy(index.is_cold).to(device),
            unit=index.vectors / np.where(norms > 0, norms, 1.0),
        )

    def user_matrix(self, vectors: pd.Series) -> torch.Tensor:
        """``(users, d)`` tensor of a batch's user vectors, on the items' device.

        Raises:
            SchemaError: a vector's length is not the items'.
        """
        vec_list = [np.asarray(v, dtype=np.float32) for v in vectors]
        lengths = {v.shape[0] for v in vec_list}
        if lengths != {self.index.dim}:
            raise SchemaError(
                f"user vectors: expected length {self.index.dim} (the item vectors'), found "
                f"{sorted(lengths)}"
            )
        return torch.from_numpy(np.stack(vec_list)).to(self.items_t.device)

    def seen_rows(self, seen: pd.Series) -> list[np.ndarray]:
        """Each user's seen items as sorted index rows (unknown ids and nulls: none)."""
        return [
            np.array(sorted({self.pos[i] for i in s if i in self.pos}), dtype=np.int64)
            if isinstance(s, list | np.ndarray)
            else np.empty(0, dtype=np.int64)
            for s in seen
        ]

    def _topk(
        self,
        users_t: torch.Tensor,
        k: int,
        excluded: tuple[Any, Any],
        candidates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        return topk_scores(
            users_t,
            self.items_t,
            k,
            exclude_rows=excluded[0],
            exclude_items=excluded[1],
            candidates=candidates,
            user_block_size=p.user_block_size,
            item_block_size=p.item_block_size,
            group_size=p.group_size,
            workers=p.torch_threads,
        )

    def top(self, users_t: torch.Tensor, seen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, item rows)`` of each user's list: the top-K, re-ranked by MMR (when
        diversity is on and the index has text), with the reserved cold-item slots filled."""
        p, text = self.params, self.index.text
        excluded = exclusion_pairs(seen) if p.exclude_seen else (None, None)
        mmr = p.diversity > 0 and text is not None
        any_cold = bool(self.index.is_cold.any())
        warm = ~self.cold_t if any_cold and not p.score_cold_items else None
        vals, idx = self._topk(
            users_t, p.k * p.diversity_candidates if mmr else p.k, excluded, warm
        )
        if mmr and text is not None:
            vals, idx = diversify(vals, idx, text, p.k, p.diversity)
        if warm is not None and not bool(torch.isfinite(vals).all()):
            # Fewer eligible warm items than places: cold items fill the rest, after them.
            fvals, fidx = self._topk(users_t, p.k, excluded, self.cold_t)
            vals, idx = backfill(vals, idx, fvals, fidx)
        if p.cold_item_slots > 0 and any_cold:
            cold_k = min(p.cold_item_slots, p.k)
            cvals, cidx = self._topk(users_t, cold_k, excluded, self.cold_t)
            vals, idx = reserve_slots(vals, idx, cvals, cidx, self.cold_t, p.cold_item_slots)
        return vals.cpu().numpy(), idx.cpu().numpy()

    def rows(
        self, user_ids: np.ndarray, v: np.ndarray, ix: np.ndarray, seen: list[np.ndarray]
    ) -> pd.DataFrame:
        """The lists as rows: ``user_id``, ``rank`` (1..n), ``item_id``, ``score``, ``reason``
        (entries without a finite score are left out)."""
        valid = np.isfinite(v)
        n_per_user = valid.sum(axis=1)
        flat_items = ix[valid]
        if self.params.reasons:
            idx = self.index
            reasons = [
                reason
                for r in range(len(user_ids))
                for reason in _explain(ix[r][valid[r]], seen[r], self.unit, idx.titles, idx.is_cold)
            ]
        else:
            reasons = [""] * int(n_per_user.sum())
        return pd.DataFrame(
            {
                USER_ID: np.repeat(user_ids, n_per_user),
                RANK: np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in n_per_user]),
                ITEM_ID: self.ids[flat_items] if flat_items.size else np.empty(0, dtype=object),
                SCORE: v[valid].astype(np.float64),
                REASON: reasons,
            }
        )


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
    scorer = _Scorer.of(index, params)
    for pdf in batches:
        if pdf.empty:
            continue
        users_t = scorer.user_matrix(pdf[vector_col])
        seen = scorer.seen_rows(pdf[seen_col])
        v, ix = scorer.top(users_t, seen)
        yield scorer.rows(pdf[user_col].to_numpy(dtype=object), v, ix, seen)


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
