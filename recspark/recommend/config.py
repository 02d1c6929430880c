"""Settings of ``recspark recommend``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecommendConfig:
    """Top-K size, exclusions and cold-start handling."""

    k: int = 10
    exclude_seen: bool = True
    cold_item_slots: int = 1
    user_block_size: int = 4096
    item_block_size: int = 65536

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, found {self.k}")
