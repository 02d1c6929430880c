"""Settings of ``recspark generate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class FaultRates:
    """Per-event probabilities of each injected fault (mutually exclusive per event)."""

    duplicate_line: float = 0.01
    resent_event: float = 0.01
    malformed_json: float = 0.002
    missing_field: float = 0.002
    bad_timestamp: float = 0.002
    out_of_window: float = 0.002
    unknown_event_type: float = 0.002
    unknown_item: float = 0.002

    def __post_init__(self) -> None:
        total = sum(getattr(self, f) for f in self.__dataclass_fields__)
        if any(getattr(self, f) < 0 for f in self.__dataclass_fields__) or total > 0.5:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 0.5, found sum {total}")


@dataclass(frozen=True)
class GenerateConfig:
    """Size and shape of the synthetic data set."""

    output: str = "data"  # events go to <output>/events, the catalog to <output>/items
    events: int = 200_000  # approximate count of clean events (sessions are drawn, then cut)
    users: int = 2_000
    items: int = 1_000
    categories: int = 12
    days: int = 28
    end: str = "2026-11-01T00:00:00Z"  # the last day of generated activity
    format: Literal["jsonl", "parquet"] = "jsonl"
    gzip: bool = False
    files: int = 4
    session_mean_events: float = 6.0
    event_id_fraction: float = 0.9  # the rest are deduplicated by the contract's hash key
    session_id_fraction: float = 0.3  # the rest are sessionized by ingest
    item_popularity_exponent: float = 2.0  # > 1 skews towards popular items (Zipf-like)
    user_activity_exponent: float = 2.5  # > 1 gives heavy-tailed user activity
    taste_strength: float = 0.8  # probability that an event follows the user's taste
    # Facets: what an item is for (beginners, experts, families, ...), stated in its title and
    # description; each user leans towards one. 0 = none (the text then says the category only).
    facets: int = 6
    # Probability that an event following the user's taste picks an item of the user's facet.
    facet_strength: float = 0.5
    cold_items: float = 0.05  # share of catalog items that get no events at all
    bot_users: int = 2
    bot_events_per_user: int = 4_000  # one event every 3 s: over 3 sustained hours
    faults: FaultRates = field(default_factory=FaultRates)

    def __post_init__(self) -> None:
        if not 0 <= self.facets <= 6:
            raise ValueError(f"facets must be in [0, 6], found {self.facets}")
        if not 0.0 <= self.facet_strength <= 1.0:
            raise ValueError(f"facet_strength must be in [0, 1], found {self.facet_strength}")
