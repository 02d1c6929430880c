"""What a stage reports when it finishes: :class:`StageSummary`.

A stage's ``run`` returns its own figures (a mapping: counts, paths, metrics); the runner
(:func:`recspark.cli.run_stages`) wraps them with the stage's name, the run id and the seconds it
took, prints the summary as one JSON line and hands the list to the run report, which finds each
stage by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Keys the summary itself owns; a stage's figures never override them.
_OWN_KEYS = ("stage", "run_id", "seconds")


@dataclass(frozen=True)
class StageSummary:
    """One stage's summary in one run.

    Attributes:
        stage: the stage's name (``ingest``, ``embed``, ``train``, ...).
        run_id: the run it belongs to.
        seconds: wall-clock seconds of the stage.
        figures: the stage's own figures (read-only), e.g. ingest's ``items``/``events`` counts.
    """

    stage: str
    run_id: str
    seconds: float
    figures: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = {k: self.figures[k] for k in _OWN_KEYS if k in self.figures}
        if own:
            raise ValueError(f"a stage's figures hold the summary's own keys: {sorted(own)}")
        object.__setattr__(self, "figures", MappingProxyType(dict(self.figures)))

    @classmethod
    def of(
        cls, stage: str, run_id: str, seconds: float, figures: Mapping[str, Any]
    ) -> StageSummary:
        """The summary of a stage's returned figures (a ``stage`` or ``run_id`` key among them,
        as older stages return, is dropped in favour of the runner's)."""
        rest = {k: v for k, v in figures.items() if k not in _OWN_KEYS}
        return cls(stage, run_id, round(seconds, 2), rest)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the figures with ``stage``, ``run_id`` and ``seconds``."""
        return {**self.figures, "stage": self.stage, "run_id": self.run_id, "seconds": self.seconds}

    def to_json(self) -> str:
        """One JSON line (keys sorted), as the commands print it."""
        return json.dumps(self.to_dict(), default=str, sort_keys=True)
