"""Training cost per example against catalog size: what the train stage's per-event cost does
as a catalog grows with the data (issue 18: train cost 1.70x per event at 1M against 200k
events, when the catalog went from 1,000 to 5,000 items).

    .venv/bin/python benchmarks/train_catalog.py --items 1000 5000 10000 50000

For each catalog size, the loss is the one ``recspark train`` picks with the default settings
(``full_softmax`` up to ``train.full_softmax_max_items``, else a sampled softmax over the
batch's targets plus ``negatives_for(...)`` uniform negatives, log-Q corrected), on random
item features and histories of ``--history-len`` items, in memory (no reader): forward,
backward and Adam, one process with ``--threads`` torch threads. The sizes are timed in
interleaved rounds (every size once per round) and the medians printed, with each size's cost
per example relative to the smallest. The pipeline benchmark's sizes have items = events / 200:
1,000 items at 200k events, 5,000 at 1M, 50,000 at 10M.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recspark.train.config import TrainConfig
from recspark.train.loop import target_shares
from recspark.train.model import (
    ItemFeatures,
    ModelShape,
    TwoTower,
    batch_loss,
    negatives_for,
    recency_weights,
)
from recspark.train.plan import fused_adam


class DensePooling(TwoTower):
    """The user tower as it pooled before 2026-12-05's evening: the recency weights scattered
    into a dense ``[B, M]`` matrix multiplied by the ``M`` item vectors of the step."""

    def pooled_users(
        self, item_vecs: torch.Tensor, positions: torch.Tensor, user_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = positions >= 0
        w = recency_weights(mask, self.half_life()).to(item_vecs.dtype)
        weights = torch.zeros(
            (positions.shape[0], item_vecs.shape[0]), dtype=item_vecs.dtype
        ).scatter_add(1, positions.clamp_min(0), w)
        total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return self._plus_own((weights @ item_vecs) / total, user_idx)


# The variants timed side by side: (fused Adam, dense pooling). The first is recspark train's.
VARIANTS = {"now": (True, False), "dense pooling": (True, True), "plain Adam": (False, False)}


def setup(
    n_items: int,
    tc: TrainConfig,
    text_dim: int,
    history_len: int,
    batch: int,
    fused: bool,
    dense: bool,
) -> dict:
    """Model, optimizer, features and batches for one catalog size (default loss choice), with
    the fused Adam ``recspark train`` uses on CPU or torch's plain one, and its pooled user
    tower or the dense one it had before."""
    g = torch.Generator().manual_seed(n_items)
    feats = ItemFeatures(
        torch.randn(n_items, text_dim, generator=g),
        torch.arange(1, n_items + 1),
        torch.randint(0, 20, (n_items,), generator=g),
    )
    shape = ModelShape(text_dim, n_items, 20, dim=tc.dim, learn_recency=True)
    torch.manual_seed(0)
    model = (DensePooling if dense else TwoTower)(shape)
    opt = torch.optim.Adam(
        model.parameters(), lr=tc.learning_rate, fused=fused_adam("cpu") if fused else None
    )
    full = n_items <= tc.full_softmax_max_items
    negs = negatives_for(n_items, tc.negatives_fraction, tc.negatives_min, tc.negatives_max)
    # Zipf-like target popularity, as real catalogs have (it decides the in-batch overlap).
    prob = target_shares(1.0 / torch.arange(1, n_items + 1, dtype=torch.float32))
    # Histories drawn from the same popularity, half full.
    hist = torch.multinomial(prob, batch * history_len, replacement=True, generator=g)
    hist = hist.reshape(batch, history_len)
    hist[:, : history_len // 2] = -1
    target = torch.multinomial(prob, batch, replacement=True, generator=g)
    return {
        "model": model,
        "opt": opt,
        "feats": feats,
        "full": full,
        "negatives": 0 if full else negs,
        "prob": prob,
        "hist": hist,
        "target": target,
        "weight": torch.ones(batch),
    }


def tower_items(s: dict) -> int:
    """Items the item tower runs on per step: all of them (full softmax), else the distinct
    items of the batch's histories and targets plus the negatives (an upper bound)."""
    n_items = int(s["feats"].text.shape[0])
    if s["full"]:
        return n_items
    seen = torch.cat([s["hist"][s["hist"] >= 0], s["target"]]).unique().numel()
    return min(n_items, int(seen) + int(s["negatives"]))


def steps(s: dict, n: int) -> float:
    """Seconds per step over ``n`` optimizer steps."""
    n_items = s["feats"].text.shape[0]
    t0 = time.perf_counter()
    for _ in range(n):
        negs = None if s["full"] else torch.randint(0, n_items, (s["negatives"],))
        s["opt"].zero_grad()
        loss = batch_loss(
            s["model"],
            s["feats"],
            s["hist"],
            s["target"],
            s["weight"],
            negs,
            full_softmax=s["full"],
            target_prob=None if s["full"] else s["prob"],
        )
        loss.backward()
        s["opt"].step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[1000, 5000, 10000, 50000])
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--history-len", type=int, default=TrainConfig().history_len)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tc = TrainConfig()
    sizes = sorted(a.items)
    setups = {
        (n, name): setup(n, tc, a.text_dim, a.history_len, tc.batch_size, *flags)
        for n in sizes
        for name, flags in VARIANTS.items()
    }
    for s in setups.values():
        steps(s, 2)  # warm-up
    times: dict[tuple[int, str], list[float]] = {k: [] for k in setups}
    for _ in range(a.rounds):
        for k in setups:
            times[k].append(steps(setups[k], a.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    others = [name for name in VARIANTS if name != "now"]
    print(
        f"batch {tc.batch_size}, history {a.history_len}, {a.threads} threads, medians of "
        f"{a.rounds} rounds of {a.steps} steps; now = recspark train's step (fused Adam, the "
        "pooled user tower by index_add), beside: " + ", ".join(others)
    )
    print(
        "| items | loss | candidates | items through the item tower | ms / step | µs / example "
        "| vs smallest | "
        + " | ".join(f"{name}: µs / example | now / {name}" for name in others)
        + " |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: | ---: |" * len(others))
    per_ex = 1e6 / tc.batch_size
    for n in sizes:
        s, now = setups[(n, "now")], med[(n, "now")]
        loss = "full softmax" if s["full"] else f"sampled, {s['negatives']} negatives"
        cand = n if s["full"] else f"≤ {tc.batch_size + s['negatives']}"
        beside = " | ".join(
            f"{med[(n, name)] * per_ex:.1f} | {now / med[(n, name)]:.2f}x" for name in others
        )
        print(
            f"| {n:,} | {loss} | {cand} | {tower_items(s):,} | {now * 1e3:.1f} | "
            f"{now * per_ex:.1f} | {now / med[(sizes[0], 'now')]:.2f}x | {beside} |"
        )


if __name__ == "__main__":
    main()
