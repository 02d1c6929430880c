"""Each worker's shard of the training Parquet, through Petastorm, as fixed-size batches.

``make_batch_reader(url, cur_shard=rank, shard_count=size, num_epochs=1)`` gives every worker
a disjoint set of row groups; the batches it yields (one per row group) are pooled in a shuffle
buffer and cut into ``batch_size`` rows, the last batch of the epoch possibly shorter. Shards
are uneven: :func:`shard_rows` lets the workers agree on a common number of steps before an
epoch (see ``loop.py``), and a worker that runs out takes padding steps of weight 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recspark.storage import file_url
from recspark.storage import local_path as storage_local_path

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
    function of ``seed``, ``epoch`` and ``rank`` only.
    """
    rng = np.random.default_rng([seed, epoch, rank])
    kw: dict[str, Any] = {
        "reader_pool_type": pool,
        "shuffle_row_groups": True,
        "seed": seed * 1009 + epoch,
    }
    if pool != "dummy":
        kw["workers_count"] = workers
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
