"""Re-ranking a top-K list: reserved places for cold items, and diversity (MMR).

Like the kernel, no Spark: tensors and arrays in, tensors and arrays out.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recspark.recommend.kernel import order_rows


def backfill(
    vals: torch.Tensor, idx: torch.Tensor, fill_vals: torch.Tensor, fill_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill each list's empty places (non-finite values, which come last) with the best fill
    entries not already in it, in their order, after the list's own entries.

    The recommend stage uses it when cold items compete only for their reserved places: a
    user with fewer eligible warm items than k still gets ``min(k, eligible)`` items, the
    cold ones after every warm one.

    Args:
        vals: ``(users, k)`` top-K values, non-finite where a place is empty.
        idx: ``(users, k)`` their item indices.
        fill_vals: ``(users, f)`` values of the fill candidates (best first).
        fill_idx: ``(users, f)`` their item indices.

    Returns:
        ``(values, indices)`` of the same shape as ``vals``.
    """
    valid = torch.isfinite(vals)
    rows = torch.nonzero(~valid.all(dim=1)).flatten().tolist()
    if not rows or fill_vals.shape[1] == 0:
        return vals, idx
    vals, idx = vals.clone(), idx.clone()
    k = vals.shape[1]
    for r in rows:
        n = int(valid[r].sum())
        have = set(idx[r, :n].tolist())
        add = [
            (v, i)
            for v, i in zip(fill_vals[r].tolist(), fill_idx[r].tolist(), strict=True)
            if math.isfinite(v) and i not in have
        ][: k - n]
        for j, (v, i) in enumerate(add):
            vals[r, n + j], idx[r, n + j] = v, i
    return vals, idx


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
    v, i = order_rows(vals[rows], idx[rows])
    vals[rows], idx[rows] = v, i
    return vals, idx


def mmr_order(relevance: np.ndarray, unit: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance: ``k`` of ``n`` candidates, picked one at a time.

    Each pick maximises ``(1 - lam) * rel(i) - lam * max_{j picked} cos(i, j)``, where ``rel``
    is the relevance min-max scaled to [0, 1] over the candidates (so ``lam`` weighs the same
    for any model's score scale) and ``cos`` the cosine of the candidates' (text) vectors.
    Ties go to the earlier candidate. With ``lam <= 0`` the first ``k`` candidates are kept in
    their order.

    Args:
        relevance: ``(n,)`` scores, the candidates ordered by them (best first).
        unit: ``(n, d)`` unit-length vectors of the candidates (zero rows: similar to none).
        k: how many to keep.
        lam: the diversity weight in [0, 1].

    Returns:
        ``(min(k, n),)`` candidate positions in pick order.
    """
    n = int(relevance.shape[0])
    k = min(k, n)
    if lam <= 0 or k <= 1:
        return np.arange(k)
    lo, hi = float(relevance.min()), float(relevance.max())
    rel = (relevance - lo) / (hi - lo) if hi > lo else np.zeros(n)
    sim = unit @ unit.T
    chosen = [0]  # the most relevant: nothing is picked yet to be similar to
    free = np.ones(n, dtype=bool)
    free[0] = False
    closest = sim[0].astype(np.float64)
    for _ in range(1, k):
        gain = np.where(free, (1.0 - lam) * rel - lam * closest, -np.inf)
        j = int(np.argmax(gain))
        chosen.append(j)
        free[j] = False
        closest = np.maximum(closest, sim[j])
    return np.asarray(chosen, dtype=np.int64)
