"""What the reports show, as plain data: metric rows, the model order, training history.

Pure functions over pandas and dataclasses; no Spark, no matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from recspark.errors import SchemaError
from recspark.summary import StageSummary

METRIC_COLUMNS: tuple[str, ...] = ("model", "metric", "k", "value")
# Baselines first, then the model under test: the column and bar order of every report.
MODEL_ORDER: tuple[str, ...] = ("popularity", "content", "als", "recspark")


@dataclass(frozen=True)
class MetricRow:
    """One metric of one model at one cut-off."""

    model: str
    metric: str
    k: int
    value: float


def by_stage(summaries: Sequence[StageSummary]) -> dict[str, Mapping[str, Any]]:
    """The figures of each stage's last summary, by stage name."""
    return {s.stage: s.figures for s in summaries}


def ordered_models(models: Sequence[str]) -> list[str]:
    """Baselines first (popularity, als), then recspark, then any other model by name."""
    known = [m for m in MODEL_ORDER if m in models]
    return known + sorted(m for m in set(models) if m not in MODEL_ORDER)


def metric_rows(metrics: pd.DataFrame) -> list[MetricRow]:
    """``gold/metrics`` rows (``model``, ``metric``, ``k``, ``value``) as evaluate's MetricRow,
    in a stable order (metric, k, model)."""
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise SchemaError(
            f"metrics: expected columns {list(METRIC_COLUMNS)}, missing {missing}; "
            f"found {sorted(map(str, metrics.columns))}"
        )
    rows = [
        MetricRow(str(r.model), str(r.metric), int(r.k), float(r.value))
        for r in metrics[list(METRIC_COLUMNS)].itertuples(index=False)
    ]
    return sorted(rows, key=lambda r: (r.metric, r.k, r.model))


def history_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Training history rows (``phase``, ``epoch``, metrics) as a DataFrame sorted by phase
    (validate before final) and epoch."""
    df = pd.DataFrame([dict(h) for h in history])
    if df.empty or "epoch" not in df.columns:
        return pd.DataFrame(columns=["phase", "epoch"])
    if "phase" not in df.columns:
        df["phase"] = "train"
    order = {"validate": 0, "final": 1}
    df["_o"] = df["phase"].map(lambda p: order.get(str(p), 2))
    df = df.sort_values(["_o", "phase", "epoch"], kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def _label(metric: str, k: int) -> str:
    return f"{metric}@{k}"


def markdown_table(rows: Sequence[MetricRow], models: Sequence[str]) -> str:
    """A markdown table: one line per metric@k, one column per model (pure)."""
    keys: list[tuple[str, int]] = []
    for r in rows:
        if (r.metric, r.k) not in keys:
            keys.append((r.metric, r.k))
    value = {(r.model, r.metric, r.k): r.value for r in rows}
    lines = [
        "| metric | " + " | ".join(models) + " |",
        "| --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for metric, k in keys:
        cells = []
        for m in models:
            v = value.get((m, metric, k))
            cells.append("" if v is None else f"{v:.4f}")
        lines.append(f"| {_label(metric, k)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
