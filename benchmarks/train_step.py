"""Training time per step, before issue 19's changes against now, on a model folder's data.

    .venv/bin/python benchmarks/train_step.py --data <warehouse>/models/<version>/data

``--data`` is the ``data/`` folder of a trained model (``make demo`` writes one). Both variants
train on the same full-softmax batches of 256 of its training examples (forward, backward,
Adam; ``--threads`` torch threads), timed in interleaved rounds:

* before: history 50 (the newest 50 of each example's history), a fixed recency half-life,
  the user tower as a gather of ``[batch, history, dim]`` item vectors, no user vectors;
* now: the defaults: history 100, the half-life learned, the pooled user tower
  (``TwoTower.pooled_users``) and users' own vectors.

An epoch has the same number of steps in both, so the ratio of the medians is that of the
epoch's training time (the Petastorm reader aside; ``recspark evaluate``'s ``samples_per_sec``
metric measures that, in the pipeline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from recspark.train.model import ModelShape, TwoTower, _history_hits, batch_loss, softmax_loss
from recspark.train.reader import load_item_features


def load(data: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    feats, known, _ = load_item_features(os.path.join(data, "items"))
    t = pq.read_table(os.path.join(data, "train"))
    hist = np.stack(t.column("history").to_numpy(zero_copy_only=False)).astype(np.int64)
    users = t.column("user_idx").to_numpy().astype(np.int64)
    return {
        "feats": replace(feats, id_idx=torch.where(known, feats.id_idx, 0)),
        "known": known,
        "history": torch.from_numpy(hist),
        "target": torch.from_numpy(t.column("target").to_numpy().astype(np.int64)),
        "weight": torch.from_numpy(t.column("weight").to_numpy().astype(np.float32)),
        "users": torch.from_numpy(users),
        "n_users": int(users.max()) + 1,
    }


def gathered_loss(model: TwoTower, d: dict[str, Any], b: torch.Tensor, hist: torch.Tensor) -> Any:
    """The full-softmax loss with the user tower as it was: a gather of history vectors."""
    feats = d["feats"]
    n = feats.text.shape[0]
    all_idx = torch.arange(n)
    vecs = model.items(feats, all_idx)
    users = model.user_tower(vecs[hist.clamp_min(0)], hist >= 0)
    hits = _history_hits(hist, all_idx, n) | ~d["known"].unsqueeze(0)
    return softmax_loss(users, vecs, d["target"][b], d["weight"][b], 0.05, hit_mask=hits)


def variant(d: dict[str, Any], now: bool) -> dict[str, Any]:
    feats = d["feats"]
    shape = ModelShape(
        feats.text.shape[1],
        feats.text.shape[0],
        int(feats.cat_idx.max()) + 1,
        learn_recency=now,
        n_users=d["n_users"] if now else 0,
    )
    torch.manual_seed(0)
    model = TwoTower(shape)
    return {"model": model, "opt": torch.optim.Adam(model.parameters(), lr=0.002), "now": now}


def seconds_per_step(d: dict[str, Any], v: dict[str, Any], steps: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    model, opt = v["model"], v["opt"]
    t0 = time.perf_counter()
    for _ in range(steps):
        b = torch.randint(0, len(d["target"]), (256,), generator=g)
        opt.zero_grad()
        if v["now"]:
            loss = batch_loss(
                model,
                d["feats"],
                d["history"][b],
                d["target"][b],
                d["weight"][b],
                full_softmax=True,
                candidates=d["known"],
                user_idx=d["users"][b],
            )
        else:
            loss = gathered_loss(model, d, b, d["history"][b][:, -50:])
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    d = load(a.data)
    if d["history"].shape[1] < 100:
        raise SystemExit(f"{a.data}: history length {d['history'].shape[1]}, expected 100")
    runs = {"before": variant(d, False), "now": variant(d, True)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(a.rounds):
        for k, v in runs.items():
            times[k].append(seconds_per_step(d, v, a.steps, r))
        print(
            f"round {r}: before {times['before'][-1] * 1e3:.1f} ms, now "
            f"{times['now'][-1] * 1e3:.1f} ms, {times['now'][-1] / times['before'][-1]:.2f}x",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"median before {med['before'] * 1e3:.1f} ms/step, now {med['now'] * 1e3:.1f} ms/step: "
        f"{med['now'] / med['before']:.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
