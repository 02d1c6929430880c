"""What a worker reads: its shard of the training Parquet, through Petastorm, as fixed-size
batches; the item features and the validation examples, whole, through pyarrow.

``make_batch_reader(url, cur_shard=rank, shard_count=size, num_epochs=1)`` gives every worker
a disjoint set of row groups; the batches it yields (one per row group) are pooled in a shuffle
buffer and cut into ``batch_size`` rows, the last batch of the epoch possibly shorter. Shards
are uneven: :func:`shard_rows` lets the workers agree on a common number of steps before an
epoch (see ``loop.py``), and a worker that runs out takes padding steps of weight 0.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recspark.storage import file_url
from recspark.storage import local_path as storage_local_path
from recspark.train.model import ItemFeatures

Batch = dict[str, np.ndarray]

# petastorm 0.12 on pyarrow 14 reads through the legacy dataset API: it works, but warns on
# every row group.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")


def dataset_url(path: str) -> str:
    """A Petastorm URL for a file path or a URL (``file:``, ``hdfs:``, ``s3:``...)."""
    return file_url(path)


def local_path(path: str) -> str:
    """The filesystem path of ``path``; a URL that is not a file path is returned as given."""
    return storage_local_path(path) or path


def row_groups(path: str) -> int:
    """The Parquet row groups of the data set at ``path`` (0 when it has no file): Petastorm's
    unit of sharding, so at most this many workers can read it."""
    import pyarrow.parquet as pq

    root = Path(local_path(path))
    return sum(pq.ParquetFile(f).metadata.num_row_groups for f in sorted(root.glob("*.parquet")))


@contextmanager
def _reader(url: str, rank: int, size: int, fields: Sequence[str], **kw: Any) -> Iterator[Any]:
    from petastorm import make_batch_reader

    reader = make_batch_reader(
        url,
        schema_fields=list(fields),
        cur_shard=rank,
        shard_count=size,
        num_epochs=1,
        **kw,
    )
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()


def shard_rows(url: str, rank: int, size: int, field: str) -> int:
    """How many rows the worker ``rank`` of ``size`` reads in one epoch."""
    n = 0
    with _reader(url, rank, size, [field], reader_pool_type="dummy", shuffle_row_groups=False) as r:
        for b in r:
            n += len(getattr(b, field))
    return n


def shard_batches(
    url: str,
    rank: int,
    size: int,
    fields: Sequence[str],
    batch_size: int,
    seed: int,
    epoch: int,
    pool: str = "thread",
    workers: int = 2,
    shuffle_buffer: int = 8192,
) -> Iterator[Batch]:
    """One epoch of the worker's shard as shuffled batches of ``batch_size`` rows.

    Every row of the shard is yielded exactly once; all batches are full except the last, so
    there are ``ceil(shard_rows / batch_size)`` of them. With ``pool="dummy"`` the order is a
    function of ``seed``, ``epoch`` and ``rank`` only. Otherwise ``workers`` threads decode row
    groups ahead of training, and at most ``workers`` decoded ones wait (Petastorm's default
    queue holds 50: a whole shard, when training is slower than reading).
    """
    rng = np.random.default_rng([seed, epoch, rank])
    kw: dict[str, Any] = {
        "reader_pool_type": pool,
        "shuffle_row_groups": True,
        "seed": seed * 1009 + epoch,
    }
    if pool != "dummy":
        kw["workers_count"] = workers
        kw["results_queue_size"] = workers
    pending: list[Batch] = []
    held = 0
    with _reader(url, rank, size, fields, **kw) as reader:
        for raw in reader:
            part = {f: np.asarray(getattr(raw, f)) for f in fields}
            pending.append(part)
            held += len(part[fields[0]])
            if held >= max(shuffle_buffer, batch_size):
                pool_rows = _shuffled(pending, rng)
                full = (held // batch_size) * batch_size
                yield from _cut(pool_rows, 0, full, batch_size)
                rest = {f: v[full:] for f, v in pool_rows.items()}
                held -= full
                pending = [rest] if held else []
    if held:
        pool_rows = _shuffled(pending, rng)
        yield from _cut(pool_rows, 0, held, batch_size)


def _shuffled(parts: list[Batch], rng: np.random.Generator) -> Batch:
    keys = list(parts[0])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    perm = rng.permutation(len(merged[keys[0]]))
    return {k: v[perm] for k, v in merged.items()}


def _cut(rows: Batch, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
    for i in range(start, stop, batch_size):
        yield {k: v[i : min(i + batch_size, stop)] for k, v in rows.items()}


def load_item_features(path: str) -> tuple[ItemFeatures, torch.Tensor, torch.Tensor]:
    """Item features (indexed by item_idx) and the known-in-training masks of both phases."""
    import pyarrow.parquet as pq

    table = pq.read_table(local_path(path)).sort_by("item_idx")
    idx = table.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{path}: item_idx must be 0..N-1 without gaps")
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    cat = table.column("cat_idx").to_numpy().astype(np.int64)
    known_train = torch.from_numpy(table.column("known_train").to_numpy(zero_copy_only=False))
    known_all = torch.from_numpy(table.column("known_all").to_numpy(zero_copy_only=False))
    feats = ItemFeatures(
        text=torch.from_numpy(emb),
        id_idx=torch.arange(1, len(idx) + 1, dtype=torch.int64),
        cat_idx=torch.from_numpy(cat),
    )
    return feats, known_train.to(torch.bool), known_all.to(torch.bool)


def load_target_counts(path: str, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each item is a training target in the validation phase and in the final one
    (``n_train`` / ``n_all`` of the item features; ones when a data set predates them)."""
    import pyarrow.parquet as pq

    table = pq.read_table(local_path(path)).sort_by("item_idx")
    out = []
    for name in ("n_train", "n_all"):
        if name in table.column_names:
            out.append(torch.from_numpy(table.column(name).to_numpy().astype(np.float64)))
        else:
            out.append(torch.ones(n_items, dtype=torch.float64))
    return out[0], out[1]


def _load_examples(
    path: str, rank: int = 0, size: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(history, target, user_idx) of every ``size``-th example of a (validation) data set,
    from the ``rank``-th in ``example_id`` order, read with pyarrow (``user_idx`` -1 when the
    data set predates it). The other rows are dropped before they are converted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = local_path(path)
    empty = torch.zeros((0,), dtype=torch.long)
    if not Path(p).exists():
        return torch.zeros((0, 1), dtype=torch.long), empty, empty
    table = pq.read_table(p).sort_by("example_id")
    if size > 1:
        table = table.take(pa.array(np.arange(rank, table.num_rows, size)))
    if table.num_rows == 0:
        return torch.zeros((0, 1), dtype=torch.long), empty, empty
    hist = np.stack(table.column("history").to_numpy(zero_copy_only=False)).astype(np.int64)
    target = table.column("target").to_numpy().astype(np.int64)
    users = (
        table.column("user_idx").to_numpy().astype(np.int64)
        if "user_idx" in table.column_names
        else np.full(len(target), -1, dtype=np.int64)
    )
    return torch.from_numpy(hist), torch.from_numpy(target), torch.from_numpy(users)


def padding_batch(history_len: int) -> Batch:
    """One row of weight 0: a worker whose shard is exhausted trains on it (zero gradient)."""
    hist = np.full((1, history_len), -1, dtype=np.int32)
    hist[0, -1] = 0
    return {
        "example_id": np.array([-1], dtype=np.int64),
        "user_idx": np.array([-1], dtype=np.int32),
        "target": np.array([0], dtype=np.int32),
        "history": hist,
        "context": hist.copy(),
        "weight": np.array([0.0], dtype=np.float32),
    }


@dataclass(frozen=True)
class WorkerData:
    """What a worker reads once: the item features, which items each phase knows, how often
    each item is a target in each phase, and this rank's share of the validation examples."""

    feats: ItemFeatures
    known_train: torch.Tensor
    known_all: torch.Tensor
    n_train: torch.Tensor
    n_all: torch.Tensor
    valid_hist: torch.Tensor
    valid_target: torch.Tensor
    valid_user: torch.Tensor


def load_worker_data(data_dir: str, rank: int, size: int, device: torch.device) -> WorkerData:
    """Read the item features and the validation examples of worker ``rank`` of ``size``
    (every ``size``-th one) from ``data_dir`` onto ``device``."""
    items = os.path.join(data_dir, "items")
    feats, known_train, known_all = load_item_features(items)
    feats = feats.to(device)
    n_train, n_all = load_target_counts(items, int(feats.text.shape[0]))
    valid_hist, valid_target, valid_user = _load_examples(
        os.path.join(data_dir, "valid"), rank, size
    )
    return WorkerData(
        feats=feats,
        known_train=known_train,
        known_all=known_all,
        n_train=n_train,
        n_all=n_all,
        valid_hist=valid_hist.to(device),
        valid_target=valid_target.to(device),
        valid_user=valid_user.to(device),
    )
