"""Settings of ``recspark evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvaluateConfig:
    """Holdout split, cut-offs and baselines."""

    holdout_fraction: float = 0.2  # the newest share of each user's interactions
    ks: tuple[int, ...] = (10,)
    als_ranks: tuple[int, ...] = field(default_factory=lambda: (16, 32))
    als_reg: tuple[float, ...] = field(default_factory=lambda: (0.01, 0.1))
    als_max_iter: int = 10
