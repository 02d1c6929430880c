"""Settings of ``recspark ingest``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _default_weights() -> dict[str, float]:
    return {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 5.0}


@dataclass(frozen=True)
class BotConfig:
    """A bot is a user with a sustained machine rate: ``min_busy_hours`` clock hours with at
    least ``events_per_hour`` events each. People rating dozens of items within a minute (as in
    MovieLens) stay well below; switch off with ``enabled: false``."""

    enabled: bool = True
    events_per_hour: int = 600
    min_busy_hours: int = 3


@dataclass(frozen=True)
class IngestConfig:
    """Validation, dedup, sessionization and interaction weights."""

    # incremental: read only the event files no earlier run processed (Structured Streaming's
    # file source, its checkpoint under the file location); full: every file, as a backfill.
    mode: Literal["incremental", "full"] = "incremental"
    # The incremental stream's source: files (Spark's file source) or autoloader (Databricks
    # Auto Loader, cloudFiles: only on Databricks).
    stream_source: Literal["files", "autoloader"] = "files"
    event_weights: dict[str, float] = field(default_factory=_default_weights)
    # Accepted event-time window: from min_ts to (run time + max_ts_lead_days).
    min_ts: str = "2000-01-01T00:00:00Z"
    max_ts_lead_days: float = 1.0
    session_gap_minutes: float = 30.0
    quarantine_unknown_items: bool = True
    broadcast_catalog: bool = True  # join without shuffling the event side
    bot: BotConfig = field(default_factory=BotConfig)
    # Interaction weight decay: each event counts 2^(-age / half_life), age measured from the
    # newest event in silver/events. Null: no decay.
    decay_half_life_days: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(
            set(self.event_weights) - {"view", "click", "add_to_cart", "purchase", "rating"}
        )
        if unknown:
            raise ValueError(f"event_weights: unknown event type {unknown[0]!r}")
        if self.session_gap_minutes <= 0:
            raise ValueError("session_gap_minutes must be > 0")
