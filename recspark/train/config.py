"""Settings of ``recspark train``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """Model shape, optimisation and launch."""

    launcher: Literal["horovod", "torch_distributor", "local"] = "horovod"
    num_proc: int = 2
    use_gpu: bool = False
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 0.002
    dim: int = 64
    history_len: int = 50
    recency_half_life: float = 10.0  # in events of the user's history
    item_id_dropout: float = 0.3
    temperature: float = 0.05
    weight_decay: float = 0.0
    patience: int = 2
    validation_days: float = 7.0
    mlflow_tracking_uri: str | None = None  # default: file store under <warehouse>/mlruns
    experiment: str = "recspark"
