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
    # Interactions in a user's history (the newest). 100 was chosen on the demo's validation
    # split (NDCG@10 0.1771 at 50, 0.1818 at 100, 0.1838 at 200, whose epochs take 2.4x as
    # long as at 50; 100 takes 1.2x).
    history_len: int = 100
    # The user tower's recency half-life, in events of the user's history: where learning
    # starts when learn_recency (Adam on its log, step recency_learning_rate), else fixed.
    # The learned value is in the model's meta.json and training metrics.
    recency_half_life: float = 10.0
    learn_recency: bool = True
    recency_learning_rate: float = 0.05
    # What a training example's user tower sees: "preceding" (the history_len interactions
    # before the target, as when scoring), "bag" (up to history_len of the user's other
    # training items, in no order) or "auto": the first epoch on the preceding history, the
    # rest on the bag when the half-life after it is at least history_len (order says little:
    # the newest item weighs at most twice the oldest), else still on the history.
    context: Literal["auto", "preceding", "bag"] = "auto"
    # A learned vector of each user's own, added to the user tower's (a known user's; a user
    # the model did not train on scores from the history alone): "on", "off", or "auto": on
    # in the epochs that train on the order-free bag (see train.context). Adam's step for it
    # is user_learning_rate (scaled by the workers, as learning_rate). Its table has a row per
    # user, so a step's gradient grows with the users (dense in the workers' allreduce).
    user_embedding: Literal["auto", "on", "off"] = "auto"
    user_learning_rate: float = 0.0003
    item_id_dropout: float = 0.3
    temperature: float = 0.05
    # The loss: a full softmax over every item when the catalog has at most
    # full_softmax_max_items items; otherwise a sampled softmax over the batch's targets plus
    # negatives drawn uniformly from the items with training interactions, both kinds
    # corrected by the log of their sampling probability (logq_correction). The number of
    # negatives scales with the catalog: negatives_fraction of it, clamped to
    # [negatives_min, negatives_max]; an explicit `negatives` count overrides that.
    full_softmax_max_items: int = 5000
    negatives: int | None = None
    negatives_fraction: float = 0.1
    negatives_min: int = 64
    negatives_max: int = 2048
    logq_correction: bool = True
    weight_decay: float = 0.0
    patience: int = 2
    validation_days: float = 7.0
    # Model version (folder name under <files>/models). Null: derived from the train
    # settings, the seed and the Delta ids and versions of the input tables, so that starting
    # the same run again resumes it from its last checkpoint instead of starting over.
    model_version: str | None = None
    # Validation ranking metric for early stopping: ndcg@k over all items, history excluded.
    validation_k: int = 10
    # Petastorm reader: "thread" (background workers) or "dummy" (in the training thread,
    # deterministic batch order; used by tests).
    reader_pool: Literal["thread", "dummy"] = "thread"
    reader_workers: int = 2
    # Rows shuffled together before batching (per worker).
    shuffle_buffer: int = 8192
    # Parquet files per training data set (at least num_proc, so every worker gets a shard),
    # more when a file would hold over data_file_rows examples. A file is one row group,
    # which a reader decodes whole: this bounds a worker's memory at any data size.
    data_files: int = 8
    data_file_rows: int = 50_000
    # Torch threads per training process; 0 = the driver's cores / num_proc.
    torch_threads: int = 0
    # Seconds horovod.spark.run waits for its tasks to start.
    start_timeout: int = 600

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, found {self.num_proc}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, found {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (in-batch negatives), found {self.batch_size}"
            )
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must be in [0, 1), found {self.item_id_dropout}")
        if self.history_len < 1 or self.dim < 1 or self.recency_half_life <= 0:
            raise ValueError("history_len, dim and recency_half_life must be > 0")
        if self.full_softmax_max_items < 0:
            raise ValueError(
                f"full_softmax_max_items must be >= 0, found {self.full_softmax_max_items}"
            )
        if self.negatives is not None and self.negatives < 0:
            raise ValueError(f"negatives must be >= 0 or null, found {self.negatives}")
        if not 0.0 <= self.negatives_fraction <= 1.0:
            raise ValueError(
                f"negatives_fraction must be in [0, 1], found {self.negatives_fraction}"
            )
        if not 0 <= self.negatives_min <= self.negatives_max:
            raise ValueError(
                "negatives_min and negatives_max must satisfy 0 <= min <= max, found "
                f"{self.negatives_min} and {self.negatives_max}"
            )
        if self.recency_learning_rate <= 0:
            raise ValueError(
                f"recency_learning_rate must be > 0, found {self.recency_learning_rate}"
            )
        if self.user_learning_rate <= 0:
            raise ValueError(f"user_learning_rate must be > 0, found {self.user_learning_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, found {self.temperature}")
        if self.data_file_rows < 1:
            raise ValueError(f"data_file_rows must be >= 1, found {self.data_file_rows}")
        if self.data_files < self.num_proc:
            raise ValueError(
                f"data_files ({self.data_files}) must be >= num_proc ({self.num_proc})"
            )
