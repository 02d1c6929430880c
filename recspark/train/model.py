"""The two-tower scoring network (torch only; no Spark import).

Item tower: the frozen text (BERT) embedding projected to ``dim``, plus a learned item-id
embedding and a category embedding, mixed by a residual layer and L2-normalised. During training
the item-id embedding is dropped at random so that the text path learns to stand alone: items
never seen in training (cold items) then score from their text and category.

User tower: the recency-weighted mean of the item-tower vectors of the user's earlier
interactions (most recent weighs 1; weight halves every ``recency_half_life`` events back). It
has no parameters of its own, so a new user with a history gets a vector, and the score of a
(user, item) pair is the dot product of the two vectors: scoring all pairs is a matrix product.

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
        nn.init.normal_(self.id_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
            self.cat_emb.weight[0].zero_()

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

    def user_tower(self, hist_vecs: Tensor, mask: Tensor) -> Tensor:
        """``[B, L, dim]`` history vectors and ``[B, L]`` validity -> ``[B, dim]``."""
        w = recency_weights(mask, self.shape.recency_half_life).to(hist_vecs.dtype)
        total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return (w.unsqueeze(-1) * hist_vecs).sum(dim=1) / total

    def users(
        self, feats: ItemFeatures, history: Tensor, item_vecs: Tensor | None = None
    ) -> Tensor:
        """User vectors from padded histories; ``item_vecs`` ([N, dim]) skips the item tower."""
        mask = history >= 0
        safe = history.clamp_min(0)
        hist = item_vecs[safe] if item_vecs is not None else self.items(feats, safe)
        return self.user_tower(hist, mask)


def recency_weights(mask: Tensor, half_life: float) -> Tensor:
    """Weights of right-aligned history positions: ``0.5 ** (age / half_life)``, 0 on padding.

    The newest entry (last column) has age 0.
    """
    length = mask.shape[-1]
    age = torch.arange(length - 1, -1, -1, device=mask.device, dtype=torch.float32)
    w = torch.pow(torch.tensor(0.5, device=mask.device), age / half_life)
    return w * mask.to(torch.float32)


def batch_loss(
    model: TwoTower,
    feats: ItemFeatures,
    history: Tensor,
    target: Tensor,
    weight: Tensor,
    negatives: Tensor | None = None,
) -> Tensor:
    """Weighted in-batch softmax loss of predicting ``target`` from ``history``.

    Candidates are the batch's distinct targets plus ``negatives`` (sampled item indices); the
    item tower runs once per distinct item of the batch. Rows of weight 0 (padding steps of a
    worker whose shard ran out) contribute nothing; a batch of only such rows gives 0 loss with
    a gradient of zeros (so the worker still takes part in the gradient allreduce).
    """
    mask = history >= 0
    parts = [history[mask], target] + ([negatives] if negatives is not None else [])
    uniq, inv = torch.unique(torch.cat(parts), return_inverse=True)
    vecs = model.items(feats, uniq)
    n_hist = int(mask.sum())
    hist_pos = torch.zeros(history.shape, dtype=torch.long, device=history.device)
    hist_pos[mask] = inv[:n_hist]
    hist_vecs = vecs[hist_pos]
    users = model.user_tower(hist_vecs, mask)
    # Candidates: distinct targets and negatives, each once (duplicates are not negatives).
    cand, label = torch.unique(inv[n_hist:], return_inverse=True)
    label = label[: target.shape[0]]
    logits = users @ vecs[cand].T / model.shape.temperature
    ce = F.cross_entropy(logits, label, reduction="none")
    total = weight.sum()
    return (ce * weight).sum() / total.clamp_min(1e-12)


@torch.no_grad()
def rank_metrics(
    model: TwoTower,
    feats: ItemFeatures,
    history: Tensor,
    target: Tensor,
    k: int,
    item_vecs: Tensor | None = None,
) -> tuple[float, float, int]:
    """Sum of NDCG@k and of recall@k of ``target`` among all items, and the example count.

    Items in the example's history are excluded from the ranking (they are never recommended).
    """
    if target.numel() == 0:
        return 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    try:
        if item_vecs is None:
            item_vecs = model.items(feats, torch.arange(feats.text.shape[0], device=target.device))
        users = model.users(feats, history, item_vecs)
        scores = users @ item_vecs.T
        mask = history >= 0
        rows = torch.arange(history.shape[0], device=history.device).unsqueeze(1).expand_as(history)
        scores[rows[mask], history[mask]] = -math.inf
        own = scores.gather(1, target.unsqueeze(1))
        rank = (scores > own).sum(dim=1) + 1
        hit = rank <= k
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
) -> tuple[float, float, int]:
    """:func:`rank_metrics` over ``chunk`` examples at a time (scores stay ``chunk x N``)."""
    was_training = model.training
    model.eval()
    try:
        all_items = torch.arange(feats.text.shape[0], device=feats.text.device)
        item_vecs = model.items(feats, all_items)
        ndcg, recall, n = 0.0, 0.0, 0
        for i in range(0, int(target.shape[0]), chunk):
            part = rank_metrics(
                model, feats, history[i : i + chunk], target[i : i + chunk], k, item_vecs
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
