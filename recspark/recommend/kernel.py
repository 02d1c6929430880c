"""Exact top-K of user x item dot products with torch: the scoring kernel of ``recommend``.

No Spark here: the functions take tensors and return tensors, so the same code runs inside a
``mapInPandas`` task on an executor, in a single process (benchmarks) and in unit tests.

Order: every top-K list is ordered by score descending, then by item index ascending, so the
result is one well-defined list even when scores tie (``torch.topk`` alone does not promise
which of several equal scores it keeps). Items excluded for a user (already seen, or not a
candidate) score ``-inf`` and are never returned as valid entries: a returned entry is valid
exactly when its score is finite.

Block-wise: users and items are cut into blocks (``plan_blocks``) so that one block of scores
fits in cache; it is reduced there to the best score of each group of consecutive items, and
the exact top-K is selected among the items of the best groups (``topk_scores`` says why that
is exact). Only the matrix products see every (user, item) pair; no ``topk`` runs over all
items, which on CPU costs as much as the products.

Not used, measured: a Cauchy-Schwarz bound (skip items whose ``|u| * |i|`` cannot beat the
k-th score) prunes nothing worth having on ALS factors (about 0.1% of items for 64-dim
factors trained on synthetic data), since the k-th score is ~0.3 of ``|u| * max |i|`` and
item norms vary by a factor of ~2 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

NEG_INF = float("-inf")

# Defaults of topk_scores, measured on 2 cores (64-dim float32 vectors, 50k items): a
# 256 x 2048 score block (2 MB) stays in cache while it is reduced to group maxima; groups of
# 16 items keep both the reduction and the items scored again (k * 16 per user) small.
USER_BLOCK_SIZE = 256
ITEM_BLOCK_SIZE = 2048
GROUP_SIZE = 16


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


def order_rows(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        vals, idx = order_rows(vals, idx)
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
        vals, idx = order_rows(vals, idx)
    return vals, idx + index_offset


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


def rounding_margin(dim: int, dtype: torch.dtype = torch.float32) -> float:
    """A bound, relative to ``|u| * max |i|``, on how much two float evaluations of ``u . i``
    can differ, with room for comparing two such differences.

    One evaluation, in any summation order, with or without fused multiply-add, is within
    ``gamma_d * |u| * |i|`` of the exact dot product (``gamma_d = d * eps / (1 - d * eps)``,
    ``eps`` the unit roundoff), so two are within ``2 * gamma_d``; a comparison made on one
    evaluation holds on another when the gap exceeds twice that: ``4 * gamma_d``.
    """
    de = max(1, dim) * torch.finfo(dtype).eps / 2
    return 4 * de / (1 - de)


def topk_scores(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    *,
    exclude_rows: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    candidates: torch.Tensor | None = None,
    user_block_size: int = USER_BLOCK_SIZE,
    item_block_size: int = ITEM_BLOCK_SIZE,
    group_size: int = GROUP_SIZE,
    workers: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` items by dot product for every user, block by block.

    How: the items are cut into groups of ``group_size`` consecutive items. A block of users
    is scored against one item block at a time (one ``item_block_size x user_block_size``
    matrix product into a reused buffer) and, while that score block is in cache, each group
    is reduced to its best score. The ``k`` groups with the best maxima hold every item of
    the exact top-``k``: the ``k``-th best group maximum is a lower bound of the ``k``-th
    score, and an item scoring at least that is in a group whose maximum does. Those
    ``k * group_size`` items are scored again and the top-``k`` is selected among them. This
    replaces a ``topk`` over every score (as costly as the matrix product) by a max over the
    scores while they are in cache.

    The cut is certain when the ``k``-th group maximum beats the ``(k+1)``-th by more than
    float rounding (``rounding_margin``), so that no evaluation order of the dot products
    could change it. The other rows (tied scores, e.g. a zero user vector; rare otherwise)
    are scored against every item in full.

    Args:
        user_vecs: ``(users, d)`` float tensor.
        item_vecs: ``(items, d)`` float tensor on the same device.
        k: list length.
        exclude_rows: user rows of (user, item) pairs never to return (e.g. seen items),
            with ``exclude_items`` holding the item indices; ``None`` excludes nothing.
        exclude_items: see ``exclude_rows``.
        candidates: optional ``(items,)`` bool mask; items where it is False are excluded
            (only the candidates are scored).
        user_block_size: users per matrix product.
        item_block_size: items per matrix product (rounded down to whole groups).
        group_size: consecutive items per group (the unit of the first selection).
        workers: threads scoring user blocks side by side; with more than one, let each
            torch op run on one thread (``torch.set_num_threads(1)``): threads that each own
            a core beat one op split across cores, and do not oversubscribe them.

    Returns:
        ``(values, indices)`` of shape ``(users, min(k, items))`` in (score desc, index asc)
        order; a row's entries with a non-finite value are not valid (the user has fewer
        eligible items than ``k``).

    Raises:
        ValueError: on mismatched dimensions, non-finite vectors, unequal exclusion arrays,
            a bad candidate mask or a block size below 1.
    """
    ex_rows, ex_items = _check_inputs(
        user_vecs,
        item_vecs,
        exclude_rows,
        exclude_items,
        (user_block_size, item_block_size, group_size),
    )
    if candidates is not None:
        sizes = (user_block_size, item_block_size, group_size, workers)
        return _topk_among(user_vecs, item_vecs, k, candidates, ex_rows, ex_items, sizes)
    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    kk = max(0, min(k, n_items))
    device, dtype = user_vecs.device, user_vecs.dtype
    out_vals = torch.full((n_users, kk), NEG_INF, dtype=dtype, device=device)
    out_idx = torch.zeros((n_users, kk), dtype=torch.int64, device=device)
    if kk == 0 or n_users == 0:
        return out_vals, out_idx
    grouped = _Grouped.of(item_vecs, kk, group_size, item_block_size)
    order = np.lexsort((ex_items, ex_rows))
    excluded = (ex_rows[order], ex_items[order])

    def score(user_blocks: list[tuple[int, int]]) -> None:
        _score_user_blocks(user_vecs, grouped, kk, excluded, user_blocks, (out_vals, out_idx))

    user_blocks = plan_blocks(n_users, user_block_size)
    if workers <= 1 or len(user_blocks) == 1:
        score(user_blocks)
    else:
        # torch ops release the GIL: the threads score disjoint user blocks side by side.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(score, [user_blocks[w::workers] for w in range(workers)]))
    return out_vals, out_idx


def _check_inputs(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    exclude_rows: np.ndarray | None,
    exclude_items: np.ndarray | None,
    sizes: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Check :func:`topk_scores`' arguments; return the exclusions as int64 arrays."""
    dim = user_vecs.shape[1]
    if dim != item_vecs.shape[1]:
        raise ValueError(f"user vectors have {dim} dims but item vectors have {item_vecs.shape[1]}")
    if not (bool(torch.isfinite(user_vecs).all()) and bool(torch.isfinite(item_vecs).all())):
        raise ValueError("user and item vectors must be finite (found NaN or infinity)")
    for name, size in zip(("user_block_size", "item_block_size", "group_size"), sizes, strict=True):
        if size < 1:
            raise ValueError(f"{name} must be >= 1, found {size}")
    ex_rows = np.empty(0, np.int64) if exclude_rows is None else np.asarray(exclude_rows, np.int64)
    ex_items = (
        np.empty(0, np.int64) if exclude_items is None else np.asarray(exclude_items, np.int64)
    )
    if ex_rows.shape != ex_items.shape:
        raise ValueError("exclude_rows and exclude_items must have the same length")
    return ex_rows, ex_items


@dataclass(frozen=True)
class _Grouped:
    """The items cut into groups of ``g`` consecutive items (zero-padded to whole groups) and
    into blocks of whole groups, with what :func:`topk_scores` derives from that cut."""

    items: torch.Tensor  # (n_pad, d): the padding rows are zero vectors, scored -inf
    groups: torch.Tensor  # (n_groups, g, d), a view of ``items``
    n_items: int
    g: int
    n_groups: int
    block: int  # items per matrix product, whole groups
    blocks: list[tuple[int, int]]
    n_pick: int  # groups kept per user: min(k, n_groups)
    margin: float  # rounding margin times the largest item norm
    offsets: torch.Tensor  # 0..g-1

    @property
    def n_pad(self) -> int:
        return self.n_groups * self.g

    @staticmethod
    def of(item_vecs: torch.Tensor, kk: int, group_size: int, item_block_size: int) -> _Grouped:
        n_items, dim = item_vecs.shape
        g = min(group_size, n_items)
        n_groups = -(-n_items // g)
        n_pad = n_groups * g
        items = item_vecs.contiguous()
        if n_pad > n_items:
            items = torch.cat([item_vecs, item_vecs.new_zeros((n_pad - n_items, dim))])
        block = max(1, item_block_size // g) * g
        return _Grouped(
            items=items,
            groups=items.view(n_groups, g, dim),
            n_items=n_items,
            g=g,
            n_groups=n_groups,
            block=block,
            blocks=plan_blocks(n_pad, block),
            n_pick=min(kk, n_groups),
            margin=rounding_margin(dim, item_vecs.dtype) * float(item_vecs.norm(dim=1).max()),
            offsets=torch.arange(g, device=item_vecs.device),
        )


def _score_user_blocks(
    user_vecs: torch.Tensor,
    gi: _Grouped,
    kk: int,
    excluded: tuple[np.ndarray, np.ndarray],
    user_blocks: list[tuple[int, int]],
    out: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Write the top-``kk`` of each user block into ``out`` (values, indices); ``excluded``:
    the (row, item) pairs never to return, sorted by row then item."""
    ex_rows, ex_items = excluded
    device, dtype, dim = user_vecs.device, user_vecs.dtype, user_vecs.shape[1]
    # Buffers reused block after block: fresh large tensors cost page faults every time.
    max_nb = max(u1 - u0 for u0, u1 in user_blocks)
    score_buf = torch.empty(min(gi.block, gi.n_pad) * max_nb, dtype=dtype, device=device)
    gmax_buf = torch.empty(gi.n_groups * max_nb, dtype=dtype, device=device)
    cand_buf = torch.empty((max_nb * gi.n_pick, gi.g, dim), dtype=dtype, device=device)
    for u0, u1 in user_blocks:
        nb = u1 - u0
        users = user_vecs[u0:u1]
        lo, hi = np.searchsorted(ex_rows, [u0, u1], side="left")
        by_item = np.argsort(ex_items[lo:hi], kind="stable")
        b_items_np = ex_items[lo:hi][by_item]
        b_rows = torch.from_numpy(ex_rows[lo:hi][by_item] - u0).to(device)
        b_items = torch.from_numpy(b_items_np).to(device)
        gmax_t = gmax_buf[: gi.n_groups * nb].view(gi.n_groups, nb)
        _group_maxima(users, gi, (b_rows, b_items, b_items_np), score_buf, gmax_t)
        chosen, undecided = _choose_groups(gmax_t, users, gi, kk)
        vals, idx = _rescore(users, gi, chosen, (b_rows, b_items), cand_buf, kk)
        if bool(undecided.any()):
            rows = torch.nonzero(undecided).flatten()
            vals[rows], idx[rows] = _topk_in_full(
                users, gi.items[: gi.n_items], kk, rows, b_rows, b_items
            )
        out[0][u0:u1], out[1][u0:u1] = vals, idx


def _group_maxima(
    users: torch.Tensor,
    gi: _Grouped,
    block_excluded: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    score_buf: torch.Tensor,
    gmax_t: torch.Tensor,
) -> None:
    """Fill ``gmax_t`` (groups, users) with each group's best score, one item block at a time
    while its scores are in cache; padding and excluded pairs score -inf."""
    b_rows, b_items, b_items_np = block_excluded
    nb = users.shape[0]
    users_t = users.T
    # Items along rows: the group max reduces the middle axis of (groups, g, users), which
    # vectorises across users.
    for i0, i1 in gi.blocks:
        scores = torch.mm(gi.items[i0:i1], users_t, out=score_buf[: (i1 - i0) * nb].view(-1, nb))
        if i1 > gi.n_items:
            scores[gi.n_items - i0 :] = NEG_INF
        a, b = np.searchsorted(b_items_np, [i0, i1], side="left")
        if b > a:
            scores[b_items[a:b] - i0, b_rows[a:b]] = NEG_INF
        torch.amax(scores.view(-1, gi.g, nb), dim=1, out=gmax_t[i0 // gi.g : i1 // gi.g])


def _choose_groups(
    gmax_t: torch.Tensor, users: torch.Tensor, gi: _Grouped, kk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's ``kk`` best groups in ascending group order, and the users whose cut
    between the ``kk``-th and the next group is within float rounding (scored in full)."""
    nb, device = users.shape[0], users.device
    if gi.n_groups > kk:
        gvals, gidx = torch.topk(gmax_t.T, kk + 1, dim=1)
        kth, nxt = gvals[:, kk - 1], gvals[:, kk]
        undecided = (kth > NEG_INF) & ~(kth - nxt > gi.margin * users.norm(dim=1))
        return gidx[:, :kk].sort(dim=1).values, undecided
    chosen = torch.arange(gi.n_groups, device=device).expand(nb, -1)
    return chosen, torch.zeros(nb, dtype=torch.bool, device=device)


def _rescore(
    users: torch.Tensor,
    gi: _Grouped,
    chosen: torch.Tensor,
    block_excluded: tuple[torch.Tensor, torch.Tensor],
    cand_buf: torch.Tensor,
    kk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score the items of the chosen groups again and select the top-``kk`` among them."""
    b_rows, b_items = block_excluded
    nb, dim, device = users.shape[0], users.shape[1], users.device
    # Sorted disjoint groups give candidates in ascending item order, so select_topk's
    # tie-break by column is the tie-break by item index.
    cand = (chosen.unsqueeze(2) * gi.g + gi.offsets).reshape(nb, -1)
    cand_vecs = torch.index_select(
        gi.groups, 0, chosen.reshape(-1), out=cand_buf[: nb * gi.n_pick]
    ).view(nb, -1, dim)
    cand_scores = torch.bmm(users.unsqueeze(1), cand_vecs.transpose(1, 2)).squeeze(1)
    invalid = cand >= gi.n_items
    if b_rows.numel():
        keys = b_rows * gi.n_pad + b_items
        invalid |= torch.isin(torch.arange(nb, device=device).unsqueeze(1) * gi.n_pad + cand, keys)
    cand_scores.masked_fill_(invalid, NEG_INF)
    vals, pos = select_topk(cand_scores, kk, check_nan=False)
    return vals, cand.gather(1, pos)


def _topk_in_full(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    rows: torch.Tensor,
    ex_rows: torch.Tensor,
    ex_items: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``users[rows]`` over every item (``ex_rows``/``ex_items``: excluded pairs)."""
    full = users[rows] @ item_vecs.T
    if ex_rows.numel():
        local = torch.full((users.shape[0],), -1, dtype=torch.int64, device=users.device)
        local[rows] = torch.arange(rows.numel(), device=users.device)
        hit = (local[ex_rows] >= 0) & (ex_items < item_vecs.shape[0])
        full[local[ex_rows[hit]], ex_items[hit]] = NEG_INF
    return select_topk(full, k, check_nan=False)


def _topk_among(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    candidates: torch.Tensor,
    ex_rows: np.ndarray,
    ex_items: np.ndarray,
    sizes: tuple[int, int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_scores`` over the candidate items only, with indices into all items."""
    n_items = item_vecs.shape[0]
    if tuple(candidates.shape) != (n_items,):
        raise ValueError(
            f"candidates must be a mask of shape ({n_items},), found {tuple(candidates.shape)}"
        )
    keep = torch.nonzero(candidates.to(torch.bool)).flatten()
    keep_np = keep.cpu().numpy()
    at = np.searchsorted(keep_np, ex_items)
    hit = at < keep_np.shape[0]
    hit[hit] = keep_np[at[hit]] == ex_items[hit]
    vals, idx = topk_scores(
        user_vecs,
        item_vecs[keep],
        k,
        exclude_rows=ex_rows[hit],
        exclude_items=at[hit],
        user_block_size=sizes[0],
        item_block_size=sizes[1],
        group_size=sizes[2],
        workers=sizes[3],
    )
    idx = keep[idx]
    missing = min(k, n_items) - vals.shape[1]
    if missing > 0:
        vals = torch.cat([vals, vals.new_full((vals.shape[0], missing), NEG_INF)], dim=1)
        idx = torch.cat([idx, idx.new_zeros((idx.shape[0], missing))], dim=1)
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
