"""The two-tower scoring network (torch only; no Spark import).

Item tower: the frozen text (BERT) embedding projected to ``dim``, plus a learned item-id
embedding and a category embedding, mixed by a residual layer and L2-normalised. During training
the item-id embedding is dropped at random so that the text path learns to stand alone: items
never seen in training (cold items) then score from their text and category.

User tower: the recency-weighted mean of the item-tower vectors of the user's earlier
interactions (most recent weighs 1; weight halves every ``recency_half_life`` events back). Its
one parameter is that half-life, learned with the rest when ``learn_recency`` (from the
configured value; how much order matters is a property of the data: a few events on
MovieLens, the whole history on data without order). So a new user with a history gets a
vector, and the score of a (user, item) pair is the dot product of the two vectors: scoring all
pairs is a matrix product.

Optionally (``n_users > 0``) a learned per-user vector is added to the user tower's output: the
model's one order-free description of a known user (rows ``user_idx + 1``; row 0, for users the
model did not train on, stays zero). Zero at the start, so a model that never trains it scores
as the history alone does.

History tensors are fixed-length ``[B, L]`` item indices, right-aligned (oldest to newest, the
newest in the last column) and left-padded with ``-1``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the network's parameters and scoring."""

    text_dim: int
    n_items: int  # item-id embedding rows 1..n_items (row 0 = no id)
    n_categories: int  # category rows 1..n_categories (row 0 = unknown)
    dim: int = 64
    item_id_dropout: float = 0.3
    recency_half_life: float = 10.0
    temperature: float = 0.05
    # Learn the half-life (a parameter, from recency_half_life) or keep it fixed (a buffer).
    learn_recency: bool = False
    # Users with a learned vector of their own (rows 1..n_users); 0 = none.
    n_users: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ItemFeatures:
    """Per-item inputs of the item tower, indexed by item index ``0..N-1``.

    ``id_idx`` is ``item_index + 1`` for items whose id embedding is trained, else 0 (the tower
    then scores the item from text and category only).
    """

    text: Tensor  # [N, text_dim] float32
    id_idx: Tensor  # [N] int64
    cat_idx: Tensor  # [N] int64

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(self.text.to(device), self.id_idx.to(device), self.cat_idx.to(device))

    def with_known(self, known: Tensor) -> ItemFeatures:
        """The same features with the id embedding switched off where ``known`` is False."""
        return ItemFeatures(self.text, torch.where(known, self.id_idx, 0), self.cat_idx)


class TwoTower(nn.Module):
    """Item tower with a parameter-free, history-based user tower (see module docstring)."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.text_proj = nn.Linear(shape.text_dim, shape.dim)
        self.id_emb = nn.Embedding(shape.n_items + 1, shape.dim, padding_idx=0)
        self.cat_emb = nn.Embedding(shape.n_categories + 1, shape.dim, padding_idx=0)
        self.mix = nn.Linear(shape.dim, shape.dim)
        log_half_life = torch.tensor(math.log(shape.recency_half_life))
        if shape.learn_recency:
            self.log_half_life = nn.Parameter(log_half_life)
        else:
            self.register_buffer("log_half_life", log_half_life)
        self.user_emb = (
            nn.Embedding(shape.n_users + 1, shape.dim, padding_idx=0) if shape.n_users > 0 else None
        )
        if self.user_emb is not None:
            nn.init.zeros_(self.user_emb.weight)
        nn.init.normal_(self.id_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
            self.cat_emb.weight[0].zero_()

    def half_life(self) -> Tensor:
        """The user tower's recency half-life, in events (a 0-d tensor)."""
        return self.log_half_life.exp()

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """``load_state_dict``; a model saved before the half-life was part of its state keeps
        the shape's half-life."""
        self.load_state_dict({"log_half_life": self.log_half_life.detach().clone(), **state})

    def item_tower(self, text: Tensor, id_idx: Tensor, cat_idx: Tensor) -> Tensor:
        """``[M, text_dim], [M], [M] -> [M, dim]`` unit vectors."""
        if self.training and self.shape.item_id_dropout > 0:
            drop = torch.rand(id_idx.shape, device=id_idx.device) < self.shape.item_id_dropout
            id_idx = torch.where(drop, torch.zeros_like(id_idx), id_idx)
        h = self.text_proj(text) + self.id_emb(id_idx) + self.cat_emb(cat_idx)
        h = h + self.mix(F.gelu(h))
        return F.normalize(h, dim=-1)

    def items(self, feats: ItemFeatures, idx: Tensor) -> Tensor:
        """Item-tower vectors of the items ``idx`` (any shape of valid indices)."""
        flat = idx.reshape(-1)
        out = self.item_tower(feats.text[flat], feats.id_idx[flat], feats.cat_idx[flat])
        return out.reshape(*idx.shape, -1)

    def user_tower(self, hist_vecs: Tensor, mask: Tensor, user_idx: Tensor | None = None) -> Tensor:
        """``[B, L, dim]`` history vectors and ``[B, L]`` validity -> ``[B, dim]``; plus each
        user's own vector when ``user_idx`` (``[B]``, -1 = unknown) is given and the model has
        them."""
        w = recency_weights(mask, self.half_life()).to(hist_vecs.dtype)
        total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return self._plus_own((w.unsqueeze(-1) * hist_vecs).sum(dim=1) / total, user_idx)

    def users(
        self,
        feats: ItemFeatures,
        history: Tensor,
        item_vecs: Tensor | None = None,
        user_idx: Tensor | None = None,
    ) -> Tensor:
        """User vectors from padded histories; ``item_vecs`` ([N, dim]) skips the item tower."""
        mask = history >= 0
        safe = history.clamp_min(0)
        hist = item_vecs[safe] if item_vecs is not None else self.items(feats, safe)
        return self.user_tower(hist, mask, user_idx)

    def pooled_users(
        self, item_vecs: Tensor, positions: Tensor, user_idx: Tensor | None = None
    ) -> Tensor:
        """:meth:`user_tower` over the rows ``positions`` (``[B, L]``, -1 = padding) of
        ``item_vecs`` (``[M, dim]``): each valid entry's weighted vector is added to its row
        with ``index_add``. The same value as gathering ``[B, L, dim]`` history vectors, but
        the backward is a gather plus an ``index_add`` of the valid entries, not the
        accumulating ``index_put`` of advanced indexing (which took most of a training step
        at history length 100). Its cost follows the history's entries, not ``M``: a dense
        ``[B, M]`` weight matrix multiplied by ``item_vecs`` (as before) made every item a
        step runs on cost ``B`` multiply-adds per dimension, three times."""
        mask = positions >= 0
        w = recency_weights(mask, self.half_life()).to(item_vecs.dtype)
        flat = mask.reshape(-1).nonzero().squeeze(1)
        rows = torch.div(flat, positions.shape[1], rounding_mode="floor")
        entries = w.reshape(-1).index_select(0, flat).unsqueeze(1) * item_vecs.index_select(
            0, positions.reshape(-1).index_select(0, flat)
        )
        sums = item_vecs.new_zeros((positions.shape[0], item_vecs.shape[1]))
        total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return self._plus_own(sums.index_add(0, rows, entries) / total, user_idx)

    def _plus_own(self, users: Tensor, user_idx: Tensor | None) -> Tensor:
        """``users`` plus each user's own vector (when given and the model has them)."""
        if user_idx is None or self.user_emb is None:
            return users
        return users + self.user_emb(user_idx.clamp_min(-1) + 1).to(users.dtype)

    def user_offsets(self) -> Tensor | None:
        """``[n_users, dim]``: the learned vector of user index ``0..n_users-1`` (None without)."""
        return None if self.user_emb is None else self.user_emb.weight[1:].detach()


def recency_weights(mask: Tensor, half_life: float | Tensor) -> Tensor:
    """Weights of right-aligned history positions: ``0.5 ** (age / half_life)``, 0 on padding.

    The newest entry (last column) has age 0. A tensor ``half_life`` keeps its gradient.
    """
    length = mask.shape[-1]
    age = torch.arange(length - 1, -1, -1, device=mask.device, dtype=torch.float32)
    if isinstance(half_life, Tensor):
        half_life = half_life.to(mask.device)
    w = torch.pow(torch.tensor(0.5, device=mask.device), age / half_life)
    return w * mask.to(torch.float32)


def negatives_for(n_items: int, fraction: float, low: int, high: int) -> int:
    """How many negatives to sample for a catalog of ``n_items``: ``fraction`` of it, clamped
    to ``[low, high]`` and never more than the catalog (pure)."""
    return max(0, min(n_items, max(low, min(high, round(fraction * n_items)))))


def expected_log_q(
    target_prob: Tensor, batch_rows: int, n_negatives: int, pool_size: int
) -> Tensor:
    """Log of each item's expected count among a step's candidates (the log-Q correction).

    A step's candidates are its ``batch_rows`` targets (drawn, over the data, with each item's
    training share ``target_prob``) and ``n_negatives`` negatives drawn uniformly from a pool of
    ``pool_size`` items: item ``c`` is expected ``batch_rows * p(c) + n_negatives / pool_size``
    times. Subtracting its log from the logit removes the bias of popular items being
    negatives more often than rare ones (sampled softmax with the "log Q" correction).

    Args:
        target_prob: ``[N]`` share of training targets per item (sums to 1).

    Returns:
        ``[N]`` float32 (``-inf`` for an item that can never be a candidate).
    """
    uniform = n_negatives / pool_size if pool_size > 0 else 0.0
    return torch.log(batch_rows * target_prob.to(torch.float32) + uniform)


def softmax_loss(
    users: Tensor,
    cand_vecs: Tensor,
    label: Tensor,
    weight: Tensor,
    temperature: float,
    *,
    hit_mask: Tensor | None = None,
    log_q: Tensor | None = None,
) -> Tensor:
    """Weighted softmax cross-entropy of each row's ``label`` among the candidates.

    Logits are ``users @ cand_vecs.T / temperature - log_q`` with the masked entries (accidental
    hits: a candidate in the row's history, or otherwise not to be scored as a negative) at
    ``-inf``; the label's own column is never masked.

    Args:
        users: ``[B, d]``; cand_vecs: ``[C, d]``; label: ``[B]`` column of each row's target.
        weight: ``[B]`` example weights (rows of weight 0 contribute nothing).
        hit_mask: ``[B, C]`` bool, True where the candidate is removed for that row.
        log_q: ``[C]`` log of each candidate's sampling probability (or expected count).

    Returns:
        The weighted mean loss (0 when every weight is 0).
    """
    logits = users @ cand_vecs.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if hit_mask is not None:
        own = torch.zeros_like(hit_mask)
        own[torch.arange(label.shape[0], device=label.device), label] = True
        logits = logits.masked_fill(hit_mask & ~own, -math.inf)
    ce = F.cross_entropy(logits, label, reduction="none")
    ce = torch.where(weight > 0, ce, torch.zeros_like(ce))
    total = weight.sum()
    return (ce * weight).sum() / total.clamp_min(1e-12)


def _history_hits(history: Tensor, col_of_item: Tensor, n_cols: int) -> Tensor:
    """``[B, n_cols]`` bool: True where a candidate column holds an item of the row's history.

    ``col_of_item`` maps an item position (as used in ``history``) to its candidate column, or
    -1 when the item is not a candidate."""
    mask = history >= 0
    cols = col_of_item[history.clamp_min(0)]
    keep = mask & (cols >= 0)
    rows = torch.arange(history.shape[0], device=history.device).unsqueeze(1).expand_as(history)
    hits = torch.zeros((history.shape[0], n_cols), dtype=torch.bool, device=history.device)
    hits[rows[keep], cols[keep]] = True
    return hits


def batch_loss(
    model: TwoTower,
    feats: ItemFeatures,
    history: Tensor,
    target: Tensor,
    weight: Tensor,
    negatives: Tensor | None = None,
    *,
    full_softmax: bool = False,
    candidates: Tensor | None = None,
    target_prob: Tensor | None = None,
    user_idx: Tensor | None = None,
) -> Tensor:
    """Weighted softmax loss of predicting ``target`` from ``history`` (and, with
    ``user_idx``, the users' own vectors).

    Two modes:

    * ``full_softmax``: every item (where ``candidates`` is True, default all) is a candidate;
      the item tower runs over the whole catalog once per step. No correction is needed.
    * sampled: candidates are the batch's distinct targets plus ``negatives`` (item indices
      drawn uniformly from the ``candidates`` pool); the item tower runs once per distinct item
      of the batch. With ``target_prob`` (each item's share of training targets), each
      candidate's logit is corrected by the log of its expected count among the candidates
      (:func:`expected_log_q`), in-batch and sampled alike.

    In both, accidental hits are removed: a candidate that is an item of the row's history is
    masked out (a candidate equal to the target appears once, as the label). Rows of weight 0
    (padding steps of a worker whose shard ran out) contribute nothing; a batch of only such
    rows gives 0 loss with a gradient of zeros (so the worker still takes part in the gradient
    allreduce).
    """
    n_all = feats.text.shape[0]
    mask = history >= 0
    temperature = model.shape.temperature
    if full_softmax:
        all_idx = torch.arange(n_all, device=target.device)
        vecs = model.items(feats, all_idx)
        users = model.pooled_users(vecs, history, user_idx)
        hits = _history_hits(history, all_idx, n_all)
        if candidates is not None:
            hits = hits | ~candidates.unsqueeze(0)
        return softmax_loss(users, vecs, target, weight, temperature, hit_mask=hits)
    parts = [history[mask], target] + ([negatives] if negatives is not None else [])
    uniq, inv = torch.unique(torch.cat(parts), return_inverse=True)
    vecs = model.items(feats, uniq)
    n_hist = int(mask.sum())
    hist_pos = torch.full(history.shape, -1, dtype=torch.long, device=history.device)
    hist_pos[mask] = inv[:n_hist]
    users = model.pooled_users(vecs, hist_pos, user_idx)
    # Candidates: distinct targets and negatives, each once (duplicates are not negatives).
    cand, label = torch.unique(inv[n_hist:], return_inverse=True)
    label = label[: target.shape[0]]
    col_of_uniq = torch.full((uniq.shape[0],), -1, dtype=torch.long, device=uniq.device)
    col_of_uniq[cand] = torch.arange(cand.shape[0], device=uniq.device)
    hits = _history_hits(hist_pos, col_of_uniq, int(cand.shape[0]))
    log_q = None
    if target_prob is not None:
        n_neg = int(negatives.shape[0]) if negatives is not None else 0
        pool = int(candidates.sum()) if candidates is not None else n_all
        log_q = expected_log_q(target_prob[uniq[cand]], int(target.shape[0]), n_neg, pool)
    return softmax_loss(users, vecs[cand], label, weight, temperature, hit_mask=hits, log_q=log_q)


@torch.no_grad()
def rank_metrics(
    model: TwoTower,
    feats: ItemFeatures,
    history: Tensor,
    target: Tensor,
    k: int,
    item_vecs: Tensor | None = None,
    exclude: Tensor | None = None,
    user_idx: Tensor | None = None,
) -> tuple[float, float, int]:
    """Sum of NDCG@k and of recall@k of ``target`` among all items, and the example count.

    Items in the example's history are excluded from the ranking (they are never recommended),
    and so are the items where ``exclude`` (``[N]`` bool) is True; a target among them is a miss.
    """
    if target.numel() == 0:
        return 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    try:
        if item_vecs is None:
            item_vecs = model.items(feats, torch.arange(feats.text.shape[0], device=target.device))
        users = model.users(feats, history, item_vecs, user_idx)
        scores = users @ item_vecs.T
        mask = history >= 0
        rows = torch.arange(history.shape[0], device=history.device).unsqueeze(1).expand_as(history)
        scores[rows[mask], history[mask]] = -math.inf
        if exclude is not None:
            scores[:, exclude] = -math.inf
        own = scores.gather(1, target.unsqueeze(1))
        rank = (scores > own).sum(dim=1) + 1
        hit = rank <= k
        if exclude is not None:
            hit = hit & ~exclude[target]
        ndcg = torch.where(hit, 1.0 / torch.log2(rank.to(torch.float32) + 1.0), 0.0)
        return float(ndcg.sum()), float(hit.to(torch.float32).sum()), int(target.numel())
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: TwoTower,
    feats: ItemFeatures,
    history: Tensor,
    target: Tensor,
    k: int,
    chunk: int = 1024,
    exclude: Tensor | None = None,
    user_idx: Tensor | None = None,
) -> tuple[float, float, int]:
    """:func:`rank_metrics` over ``chunk`` examples at a time (scores stay ``chunk x N``)."""
    was_training = model.training
    model.eval()
    try:
        all_items = torch.arange(feats.text.shape[0], device=feats.text.device)
        item_vecs = model.items(feats, all_items)
        ndcg, recall, n = 0.0, 0.0, 0
        for i in range(0, int(target.shape[0]), chunk):
            users = None if user_idx is None else user_idx[i : i + chunk]
            part = rank_metrics(
                model,
                feats,
                history[i : i + chunk],
                target[i : i + chunk],
                k,
                item_vecs,
                exclude,
                users,
            )
            ndcg, recall, n = ndcg + part[0], recall + part[1], n + part[2]
        return ndcg, recall, n
    finally:
        model.train(was_training)


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter's bytes (to check that ranks hold identical weights)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
