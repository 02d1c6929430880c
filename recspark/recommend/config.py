"""Settings of ``recspark recommend``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True)
class RecommendConfig:
    """Top-K size, exclusions, cold-start handling and how the kernel runs."""

    k: int = 10
    # Leave out items the user already interacted with (contract default).
    exclude_seen: bool = True
    # Places of each list kept for items with no interactions yet (0 disables). Null: the
    # model's choice on its validation period (1 when users took up any item new in that
    # period, else 0; 1 for a model without that record).
    cold_item_slots: int | None = None
    # Whether items with no interactions compete for every place (true) or only for their
    # reserved places (false: at most cold_item_slots of them per list; none with 0 slots).
    # Null: the model's choice on its validation period (true when ranking them among the
    # others scored higher there than leaving them out; true without that record).
    score_cold_items: bool | None = None
    # Users per matrix product inside a task, and items per block: a task holds one
    # user_block_size x item_block_size float32 score matrix at a time, reduced to the best
    # score of each group of consecutive items while it is in cache (see kernel.topk_scores).
    # The defaults (the kernel's; not imported, to keep torch out of config loading) keep that
    # matrix (2 MB) in a core's cache.
    user_block_size: int = 256
    item_block_size: int = 2048
    # Consecutive items per group (the unit of the kernel's first, in-cache selection).
    group_size: int = 16
    # Threads per Spark task scoring user blocks side by side, one torch thread each (Spark
    # already runs one task per core, so 1 unless tasks get several cores).
    torch_threads: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Write a readable reason per row ("because you liked <title>").
    reasons: bool = True
    # Diversity re-rank (maximal marginal relevance over the items' text embeddings): 0 = off;
    # in (0, 1] the weight of dissimilarity to the items already picked against the (min-max
    # scaled) score. The top diversity_candidates x k items of each user are re-ranked.
    diversity: float = 0.0
    diversity_candidates: int = 3
    # The model to score with: null = the newest model version in gold/item_vectors and
    # gold/user_vectors (train's output); or a registered model, models:/<name>@<alias> or
    # models:/<name>/<version>, whose item vectors the run loads from the registry.
    model: str | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, found {self.k}")
        if self.cold_item_slots is not None and self.cold_item_slots < 0:
            raise ValueError(f"cold_item_slots must be >= 0, found {self.cold_item_slots}")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], found {self.diversity}")
        if self.model is not None and not self.model.startswith("models:/"):
            raise ValueError(
                f"model must be null or models:/<name>@<alias> or models:/<name>/<version>, "
                f"found {self.model!r}"
            )
        for name in (
            "user_block_size",
            "item_block_size",
            "group_size",
            "torch_threads",
            "diversity_candidates",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")


def cold_settings(rc: RecommendConfig, choice: Mapping[str, Any] | None) -> tuple[bool, int]:
    """``score_cold_items`` and ``cold_item_slots`` (pure): as configured, or where left null,
    from the model's ``cold_items`` record (its ``meta.json``: ``score`` and ``slots``, chosen on
    its validation period), or true and 1 without one."""
    score = rc.score_cold_items
    if score is None:
        score = bool(choice["score"]) if choice is not None else True
    slots = rc.cold_item_slots
    if slots is None:
        slots = int(choice["slots"]) if choice is not None else 1
    return score, slots


def with_cold_choice(rc: RecommendConfig, choice: Mapping[str, Any] | None) -> RecommendConfig:
    """``rc`` with its cold-item settings resolved by :func:`cold_settings` (pure)."""
    score, slots = cold_settings(rc, choice)
    return replace(rc, score_cold_items=score, cold_item_slots=slots)
