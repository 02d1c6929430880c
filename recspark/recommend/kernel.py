"""Exact top-K of user x item dot products with torch: the scoring kernel of ``recommend``.

No Spark here: the functions take tensors and return tensors, so the same code runs inside a
``mapInPandas`` task on an executor, in a single process (benchmarks) and in unit tests.

Order: every top-K list is ordered by score descending, then by item index ascending, so the
result is one well-defined list even when scores tie (``torch.topk`` alone does not promise
which of several equal scores it keeps). Items excluded for a user (already seen, or not a
candidate) score ``-inf`` and are never returned as valid entries: a returned entry is valid
exactly when its score is finite.

Block-wise: the item axis is cut into blocks (``plan_blocks``); each block gives an exact
partial top-K and ``merge_topk`` of the partial lists equals the top-K of one block holding
every item, because an item in the overall top-K is in the top-K of its own block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NEG_INF = float("-inf")


def plan_blocks(n: int, block_size: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into consecutive ``(start, stop)`` blocks of at most ``block_size``.

    Args:
        n: number of rows (users or items); 0 gives no block.
        block_size: the largest block, >= 1.

    Returns:
        ``[(0, b), (b, 2b), ..., (m, n)]``.

    Raises:
        ValueError: when ``n < 0`` or ``block_size < 1``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, found {n}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, found {block_size}")
    return [(s, min(s + block_size, n)) for s in range(0, n, block_size)]


def pick_device(preference: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """The device to score on: ``cpu``, ``cuda`` or ``auto`` (CUDA when there is one).

    Args:
        preference: ``auto``, ``cpu`` or ``cuda``.
        cuda_available: whether CUDA is usable (default: ``torch.cuda.is_available()``).

    Raises:
        ValueError: for an unknown preference, or ``cuda`` when no CUDA device is usable.
    """
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if preference == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not has_cuda:
            raise ValueError("recommend.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    raise ValueError(f"recommend.device must be one of auto, cpu, cuda; found {preference!r}")


def _order_rows(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score desc, index asc)."""
    idx_sorted, perm = torch.sort(idx, dim=1)
    vals_by_idx = vals.gather(1, perm)
    vals_out, perm2 = torch.sort(vals_by_idx, dim=1, descending=True, stable=True)
    return vals_out, idx_sorted.gather(1, perm2)


def select_topk(
    scores: torch.Tensor, k: int, index_offset: int = 0, check_nan: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of each row of ``scores`` in (score desc, column asc) order.

    Args:
        scores: ``(users, items)`` float scores; ``-inf`` marks an excluded item; NaN counts
            as excluded.
        k: how many to keep (at most the number of columns are returned).
        index_offset: added to the returned column indices (the block's first item).
        check_nan: treat NaN scores as excluded (one more pass over ``scores``; callers
            whose vectors are known finite skip it).

    Returns:
        ``(values, indices)`` of shape ``(users, min(k, items))``; indices are int64 and global
        (``column + index_offset``); entries with a non-finite value are not valid.
    """
    n_users, n_items = scores.shape
    kk = min(k, n_items)
    if kk <= 0 or n_users == 0:
        empty = torch.empty((n_users, 0), dtype=scores.dtype, device=scores.device)
        return empty, torch.empty((n_users, 0), dtype=torch.int64, device=scores.device)
    if check_nan and bool(torch.isnan(scores).any()):
        scores = torch.where(torch.isnan(scores), NEG_INF, scores)
    if kk == n_items:
        vals, idx = scores, torch.arange(n_items, device=scores.device).expand(n_users, -1)
        vals, idx = _order_rows(vals, idx)
    else:
        # One more than needed: the set of the top k is ambiguous only when the k-th and the
        # (k+1)-th scores are equal; those rows (rare) are resolved by a stable full sort.
        vals, idx = torch.topk(scores, kk + 1, dim=1, largest=True, sorted=True)
        ambiguous = vals[:, kk - 1] == vals[:, kk]
        vals, idx = vals[:, :kk].contiguous(), idx[:, :kk].contiguous()
        if bool(ambiguous.any()):
            rows = torch.nonzero(ambiguous).flatten()
            order = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :kk]
            idx[rows] = order
            vals[rows] = scores[rows].gather(1, order)
        vals, idx = _order_rows(vals, idx)
    return vals, idx + index_offset


def merge_topk(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial top-K lists (same users, disjoint items) into one exact top-``k``.

    Args:
        parts: ``(values, global indices)`` pairs, each ``(users, k_i)``.
        k: how many to keep.

    Returns:
        ``(values, indices)`` of shape ``(users, min(k, sum k_i))`` in (score desc, index asc)
        order.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one partial list")
    vals = torch.cat([p[0] for p in parts], dim=1)
    idx = torch.cat([p[1] for p in parts], dim=1)
    vals, idx = _order_rows(vals, idx)
    kk = min(k, vals.shape[1])
    return vals[:, :kk].contiguous(), idx[:, :kk].contiguous()


def exclusion_pairs(seen: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user lists of item indices to exclude as (row, item) pairs sorted by row.

    Args:
        seen: for each user row, an int array of item indices (or None).

    Returns:
        ``(rows, items)`` int64 arrays of equal length.
    """
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for r, s in enumerate(seen):
        if s is None or len(s) == 0:
            continue
        a = np.asarray(s, dtype=np.int64)
        rows.append(np.full(a.shape[0], r, dtype=np.int64))
        cols.append(a)
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def topk_scores(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    *,
    exclude_rows: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    candidates: torch.Tensor | None = None,
    user_block_size: int = 1024,
    item_block_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` items by dot product for every user, block by block.

    Args:
        user_vecs: ``(users, d)`` float tensor.
        item_vecs: ``(items, d)`` float tensor on the same device.
        k: list length.
        exclude_rows: user rows of (user, item) pairs never to return (e.g. seen items),
            with ``exclude_items`` holding the item indices; ``None`` excludes nothing.
        exclude_items: see ``exclude_rows``.
        candidates: optional ``(items,)`` bool mask; items where it is False are excluded.
        user_block_size: users scored per matrix product.
        item_block_size: items scored per matrix product; partial lists are merged.

    Returns:
        ``(values, indices)`` of shape ``(users, min(k, items))``; a row's entries with a
        non-finite value are not valid (the user has fewer eligible items than ``k``).
    """
    n_users = user_vecs.shape[0]
    n_items = item_vecs.shape[0]
    if user_vecs.shape[1] != item_vecs.shape[1]:
        raise ValueError(
            f"user vectors have {user_vecs.shape[1]} dims but item vectors have "
            f"{item_vecs.shape[1]}"
        )
    if not (bool(torch.isfinite(user_vecs).all()) and bool(torch.isfinite(item_vecs).all())):
        raise ValueError("user and item vectors must be finite (found NaN or infinity)")
    kk = min(k, n_items)
    device = user_vecs.device
    out_vals = torch.full((n_users, kk), NEG_INF, dtype=user_vecs.dtype, device=device)
    out_idx = torch.zeros((n_users, kk), dtype=torch.int64, device=device)
    ex_rows = np.empty(0, np.int64) if exclude_rows is None else np.asarray(exclude_rows, np.int64)
    ex_items = (
        np.empty(0, np.int64) if exclude_items is None else np.asarray(exclude_items, np.int64)
    )
    if ex_rows.shape != ex_items.shape:
        raise ValueError("exclude_rows and exclude_items must have the same length")
    order = np.argsort(ex_rows, kind="stable")
    ex_rows, ex_items = ex_rows[order], ex_items[order]
    item_blocks = plan_blocks(n_items, item_block_size)
    for u0, u1 in plan_blocks(n_users, user_block_size):
        lo, hi = np.searchsorted(ex_rows, [u0, u1], side="left")
        b_rows, b_items = ex_rows[lo:hi] - u0, ex_items[lo:hi]
        users = user_vecs[u0:u1]
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for i0, i1 in item_blocks:
            scores = users @ item_vecs[i0:i1].T
            if candidates is not None:
                scores[:, ~candidates[i0:i1]] = NEG_INF
            sel = (b_items >= i0) & (b_items < i1)
            if sel.any():
                r = torch.from_numpy(b_rows[sel]).to(device)
                c = torch.from_numpy(b_items[sel] - i0).to(device)
                scores[r, c] = NEG_INF
            part = select_topk(scores, k, index_offset=i0, check_nan=False)
            best = part if best is None else merge_topk([best, part], k)
        if best is not None:
            out_vals[u0:u1], out_idx[u0:u1] = best
    return out_vals, out_idx


def reserve_slots(
    vals: torch.Tensor,
    idx: torch.Tensor,
    cold_vals: torch.Tensor,
    cold_idx: torch.Tensor,
    is_cold: torch.Tensor,
    slots: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep up to ``slots`` places of each top-K list for cold items (no interactions yet).

    When a user's top-K already holds ``c`` cold items and fewer than ``slots``, the lowest
    ranked non-cold entries give way to the best cold items not yet in the list (as many as
    the user has eligible), and the list is re-ordered by (score desc, index asc).

    Args:
        vals: ``(users, k)`` top-K values over all eligible items (from ``topk_scores``).
        idx: ``(users, k)`` their item indices.
        cold_vals: ``(users, s)`` top-``slots`` values over eligible cold items only.
        cold_idx: ``(users, s)`` their item indices.
        is_cold: ``(items,)`` bool mask of cold items.
        slots: places kept for cold items (capped at ``k``).

    Returns:
        ``(values, indices)`` of the same shape as ``vals``.
    """
    k = vals.shape[1]
    slots = min(slots, k)
    if slots <= 0 or vals.shape[0] == 0 or cold_vals.shape[1] == 0:
        return vals, idx
    valid = torch.isfinite(vals)
    cold_in = is_cold[idx] & valid
    have = cold_in.sum(dim=1)
    avail = torch.isfinite(cold_vals[:, :slots]).sum(dim=1)
    need = torch.clamp(torch.clamp(avail, max=slots) - have, min=0)
    rows = torch.nonzero(need > 0).flatten().tolist()
    if not rows:
        return vals, idx
    vals, idx = vals.clone(), idx.clone()
    for r in rows:
        n_need, n_have = int(need[r]), int(have[r])
        # The cold items already in the list are the first n_have of the cold top list (same
        # order), so the next n_need of that list are new; warm entries give way from the end.
        warm_pos = torch.nonzero(~cold_in[r]).flatten()
        drop = warm_pos[-n_need:]
        vals[r, drop] = cold_vals[r, n_have : n_have + n_need]
        idx[r, drop] = cold_idx[r, n_have : n_have + n_need]
    v, i = _order_rows(vals[rows], idx[rows])
    vals[rows], idx[rows] = v, i
    return vals, idx


def brute_force_topk(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    k: int,
    exclude: Sequence[set[int]] | None = None,
) -> list[list[tuple[int, float]]]:
    """Reference top-K in plain numpy (tests and benchmarks): sort every row in full.

    Returns:
        for each user, ``[(item index, score), ...]`` in (score desc, index asc) order,
        without excluded items.
    """
    scores = user_vecs.astype(np.float32) @ item_vecs.astype(np.float32).T
    out: list[list[tuple[int, float]]] = []
    for u in range(scores.shape[0]):
        ex = exclude[u] if exclude is not None else set()
        row = [(i, float(scores[u, i])) for i in range(scores.shape[1]) if i not in ex]
        row.sort(key=lambda t: (-t[1], t[0]))
        out.append(row[:k])
    return out
