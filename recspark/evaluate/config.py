"""Settings of ``recspark evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS: tuple[str, ...] = ("recspark", "popularity", "als", "content")


@dataclass(frozen=True)
class EvaluateConfig:
    """Holdout split, cut-offs, models and baselines."""

    holdout_fraction: float = 0.2  # the newest share of each user's interactions
    # Interactions every user keeps for training (users with fewer are not evaluated).
    min_train: int = 1
    ks: tuple[int, ...] = (10,)
    # Which models to score: recspark (trained with recspark.train.trainer), popularity, als,
    # content (the user's mean text embedding, cosine top-K over the items' text embeddings).
    models: tuple[str, ...] = MODELS
    # Score on a validation split carved from the training part (the same rule applied to
    # it) instead of the test split: for choosing settings without looking at the test set.
    validation_only: bool = False
    # ALS's grid (ranks x reg, with als_alpha), searched on a validation split of the
    # training part. While the best point lies on an edge of what was tried, up to als_extend
    # more points are tried beyond it (rank doubled up to als_max_rank, reg times or divided
    # by 3, alpha divided or times 10; see baselines.als_next), so that the baseline is tuned,
    # not stopped at the grid's edge. A one-point grid is used as given.
    als_ranks: tuple[int, ...] = field(default_factory=lambda: (32, 64))
    als_reg: tuple[float, ...] = field(default_factory=lambda: (0.1, 0.3))
    als_extend: int = 4
    als_max_rank: int = 256
    als_max_iter: int = 10
    als_alpha: float = 1.0
    # Write report.md and metrics.png under <files>/reports/<run_id>/.
    report: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), found {self.holdout_fraction}")
        if self.min_train < 1:
            raise ValueError(f"min_train must be >= 1, found {self.min_train}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty list of values >= 1, found {self.ks}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be among {list(MODELS)}, found {list(self.models)}")
        if not self.als_ranks or not self.als_reg:
            raise ValueError("als_ranks and als_reg must not be empty")
        if self.als_extend < 0 or self.als_max_rank < 1:
            raise ValueError(
                f"als_extend must be >= 0 and als_max_rank >= 1, found {self.als_extend} and "
                f"{self.als_max_rank}"
            )
